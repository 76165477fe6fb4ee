#!/usr/bin/env python3
"""Bring up (and tear down) a node's two real container runtimes, offline.

    python scripts/runtimes.py up DIR     # prints the info dict as JSON
    python scripts/runtimes.py down DIR

`up` starts two containerd instances in DIR (A: runc, B: crun), a tiny local registry
(scripts/registry.py) that both pull from, and imports a busybox image built locally from
Debian's static busybox. `down` stops exactly what `up` started and unmounts what is left
under DIR. Tests import `up(dir) -> dict` and `down(dir) -> None`, and
`restart_instance(dir, name) -> dict` (or `stop_daemon` and `start_daemon`) to restart one
containerd under its clients.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Iterable

PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
REGISTRY_HOST = "registry.criproxy.test"  # made up; containerd mirrors it to our registry
REGISTRY_BUSYBOX = f"{REGISTRY_HOST}/busybox:latest"  # served only, never imported
# Hosts whose pulls go to the local registry: the made-up one for PullImage tests, and the
# real ones so that nothing (e.g. a missing sandbox image) ever tries to leave the machine.
MIRRORED_HOSTS = (REGISTRY_HOST, "docker.io", "registry.k8s.io")
# name -> OCI runtime binary; the runtime handler name of each instance is the same word.
INSTANCES = {"a": "runc", "b": "crun"}
PACKAGES = {"containerd": "containerd", "ctr": "containerd", "runc": "runc",
            "crun": "crun", "unshare": "util-linux", "ip": "iproute2"}
OWNED_SUBDIRS = ("image", "registry", *(f"containerd-{name}" for name in INSTANCES))
CNI_BIN_DIR = "/usr/lib/cni"
BUSYBOX = Path("/bin/busybox")
CREATED = "2024-01-01T00:00:00Z"  # fixed, so the image digests are the same on every run
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes; ".ttrpc" is appended


# ---------------------------------------------------------------- packages


def is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP (dynamic loader) program header."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # only 64-bit little-endian is expected
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = (struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum))
    return 3 not in types  # PT_INTERP == 3


def ensure_packages() -> None:
    """apt-get install what is missing; 'apt-get update' only then (it is slow)."""
    missing = {pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)}
    if not shutil.which("containerd-shim-runc-v2"):
        missing.add("containerd")
    if not Path(CNI_BIN_DIR, "bridge").exists():
        missing.add("containernetworking-plugins")
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        missing.add("busybox-static")
    if missing:
        apt_install(missing)


def apt_install(packages: Iterable[str], lock_timeout: float | None = None) -> None:
    """apt-get update, then install `packages` without recommends, non-interactively;
    with `lock_timeout`, wait that long for another dpkg run to finish."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-q"]
    if lock_timeout is not None:
        apt += ["-o", f"DPkg::Lock::Timeout={int(lock_timeout)}"]
    subprocess.run([*apt, "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([*apt, "install", "-y", "--no-install-recommends", *sorted(packages)],
                   check=True, env=env, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------- image


def add_blob(layout: Path, data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def busybox_layer() -> bytes:
    """An uncompressed, reproducible tar: /bin/busybox, every applet as a symlink, /etc basics."""
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 1704067200, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr", "usr/bin",
                  "usr/sbin", "var"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in sorted(set(applets) - {"bin/busybox"}):
            add(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def image_config(diff_id: str, process: dict) -> bytes:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
              **process}
    return json.dumps({
        "created": CREATED, "architecture": arch, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "criproxy scripts/runtimes.py"}],
    }, sort_keys=True).encode()


def build_image(out: Path) -> Path:
    """OCI layout at out/oci (served by the registry) and a tar of it (imported with ctr).

    Three images share the busybox layer: busybox (Cmd sh); the pause image, whose default
    command must block forever because containerd runs the sandbox image as is; and a
    registry-only busybox with its own image ID, so that RemoveImage of it (which drops
    every tag of that ID) leaves the imported images alone.
    """
    layout = out / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer = busybox_layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_desc = add_blob(layout, gzip.compress(layer, mtime=0),
                          "application/vnd.oci.image.layer.v1.tar+gzip")
    images = ((BUSYBOX_IMAGE, {"Cmd": ["sh"]}),
              (PAUSE_IMAGE, {"Entrypoint": ["/bin/sleep", "inf"]}),
              (REGISTRY_BUSYBOX, {"Cmd": ["sh"], "Labels": {"criproxy.test/from": "registry"}}))
    manifests = []
    for name, process in images:
        config = add_blob(layout, image_config(diff_id, process),
                          "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": [layer_desc]}
        desc = add_blob(layout, json.dumps(manifest, sort_keys=True).encode(), manifest["mediaType"])
        desc["annotations"] = {"io.containerd.image.name": name,
                               "org.opencontainers.image.ref.name": name.rpartition(":")[2]}
        manifests.append(desc)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    # The tar's index names only the images to import; the registry one must be pulled.
    imported = [d for d in manifests
                if d["annotations"]["io.containerd.image.name"] != REGISTRY_BUSYBOX]
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": imported}))
    tar_path = out / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(layout / "oci-layout", arcname="oci-layout")
        tar.add(out / "index.json", arcname="index.json")
        tar.add(layout / "blobs", arcname="blobs")
    return tar_path


# ---------------------------------------------------------------- processes


def proc_start_time(pid: int) -> int | None:
    """Start time in clock ticks (stat field 22), to tell our pid from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def alive(pid: int, start: int | None = None) -> bool:
    try:  # reap it if it is our own child (up() and down() in one test process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


def spawn(argv: list[str], log: Path, pidfile: Path) -> int:
    """Start a daemon in its own session (so it outlives us and our signals) and record it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    pidfile.write_text(f"{proc.pid} {proc_start_time(proc.pid)}\n")
    return proc.pid


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(dir: Path, layout: Path) -> tuple[int, int]:
    d = dir / "registry"
    d.mkdir(parents=True, exist_ok=True)
    port_file = d / "port"
    port_file.unlink(missing_ok=True)
    script = Path(__file__).with_name("registry.py")
    pid = spawn([sys.executable, str(script), str(layout), "--port-file", str(port_file)],
                d / "registry.log", d / "pid")
    deadline = time.monotonic() + START_TIMEOUT
    while not port_file.exists():
        if not alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"registry did not start:\n{tail(d / 'registry.log')}")
        time.sleep(0.05)
    return pid, int(port_file.read_text())


# ---------------------------------------------------------------- containerd


def crun_wrapper(d: Path) -> Path:
    """crun refuses a hybrid cgroup v1/v2 host ("cgroups in hybrid mode not supported").
    In a private mount namespace without the v2 mount it sees plain cgroup v1, as runc does.
    unshare -m makes the namespace private by default, so the host keeps its mount."""
    path = d / "crun-wrapper"
    path.write_text("#!/bin/sh\nexec unshare -m sh -c "
                    "'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' crun \"$@\"\n")
    path.chmod(0o755)
    return path


def write_hosts(d: Path, registry: str) -> Path:
    """registry config_path dir: each mirrored host resolves and pulls only from ours."""
    certs = d / "certs.d"
    for host in MIRRORED_HOSTS:
        (certs / host).mkdir(parents=True, exist_ok=True)
        (certs / host / "hosts.toml").write_text(
            f'server = "http://{registry}"\n\n[host."http://{registry}"]\n'
            f'  capabilities = ["pull", "resolve"]\n')
    return certs


def write_cni(dir: Path, d: Path, index: int) -> str:
    """A bridge network for pods that are not host-network. Isolated on purpose: the
    bridge has no address, there is no route and no masquerade, so pod traffic can't leave
    the bridge (only this machine's loopback may ever be a target here). The bridge name
    is unique per DIR and instance; containerd adds the loopback network itself."""
    bridge = "cri" + hashlib.sha256(str(dir).encode()).hexdigest()[:8] + d.name[-1]
    conf = {"cniVersion": "1.0.0", "name": f"criproxy-{d.name}", "plugins": [{
        "type": "bridge", "bridge": bridge, "isGateway": False, "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.88.{index}.0/24"}]],
                 "dataDir": str(d / "cni-ipam")}}]}
    (d / "cni").mkdir(exist_ok=True)
    (d / "cni" / "10-criproxy.conflist").write_text(json.dumps(conf, indent=2))
    return bridge


def containerd_config(d: Path, runtime: str, binary: str, stream_port: int) -> str:
    """Config version 2 (containerd 1.6/1.7). Notable settings:
    - restrict_oom_score_adj: we lack CAP_SYS_RESOURCE, so may not lower oom_score_adj;
    - snapshotter native: overlayfs is not usable everywhere we run (nested, tmpfs);
    - no TCP listeners except the streaming server, on 127.0.0.1 at a port of its own;
    - runtime Root, opt and netns under d, so nothing of one instance lands in /run or /opt.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d}/root"
state = "{d}/state"
oom_score = 0

[grpc]
  address = "{d}/containerd.sock"
  tcp_address = ""
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  enable_tls_streaming = false
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{d}/cni"
[{cri}.containerd]
  snapshotter = "native"
  default_runtime_name = "{runtime}"
[{cri}.containerd.runtimes.{runtime}]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.{runtime}.options]
  BinaryName = "{binary}"
  Root = "{d}/runtime-root"
  SystemdCgroup = false
[{cri}.registry]
  config_path = "{d}/certs.d"
"""


def cri_version(sock: Path, timeout: float = 2.0) -> str:
    import grpc  # imported late: `down` and the image build need no grpc
    from cri_api.v1 import api_pb2, api_pb2_grpc

    with grpc.insecure_channel(f"unix://{sock}") as ch:
        resp = api_pb2_grpc.RuntimeServiceStub(ch).Version(api_pb2.VersionRequest(),
                                                           timeout=timeout)
    return f"{resp.runtime_name} {resp.runtime_version}"


def wait_cri(sock: Path, pid: int, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return cri_version(sock)
        except Exception as err:  # grpc.RpcError until the socket answers
            last = err
        if not alive(pid):
            raise RuntimeError(f"containerd ({sock}) exited:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"containerd ({sock}) no CRI Version after {START_TIMEOUT}s "
                               f"({last}):\n{tail(log)}")
        time.sleep(0.2)


def wait_images(sock: Path, names: tuple[str, ...]) -> None:
    """The CRI plugin learns of ctr's import through events: wait until it lists them."""
    import grpc
    from cri_api.v1 import api_pb2 as pb, api_pb2_grpc

    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(f"unix://{sock}") as ch:
        images = api_pb2_grpc.ImageServiceStub(ch)
        while not all(images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=n)),
                                         timeout=5).HasField("image") for n in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sock}: CRI does not list the imported {names}")
            time.sleep(0.1)


def import_images(sock: Path, tar: Path) -> None:
    """Unpack into the native snapshotter: ctr's default (overlayfs) is not the CRI's."""
    proc = subprocess.run(["ctr", "-a", str(sock), "-n", "k8s.io", "images", "import",
                           "--snapshotter", "native", str(tar)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ctr import into {sock} failed: {proc.stderr}")


def start_instance(dir: Path, index: int, name: str, runtime: str, registry: str) -> dict:
    d = dir / f"containerd-{name}"
    d.mkdir(parents=True, exist_ok=True)
    bridge = write_cni(dir, d, index)
    sock = d / "containerd.sock"
    if len(str(sock)) + len(".ttrpc") > MAX_SOCKET_PATH:
        raise ValueError(f"{sock}: path too long for a unix socket; use a shorter DIR")
    binary = str(crun_wrapper(d)) if runtime == "crun" else shutil.which(runtime)
    write_hosts(d, registry)
    port = free_port()
    (d / "config.toml").write_text(containerd_config(d, runtime, binary, port))
    log = d / "containerd.log"
    pid = spawn(["containerd", "--config", str(d / "config.toml")], log, d / "pid")
    return {"name": name, "runtime_handler": runtime, "oci_runtime": runtime, "dir": str(d),
            "socket": str(sock), "endpoint": f"unix://{sock}", "pid": pid,
            "stream_port": port, "log": str(log), "cni_bridge": bridge,
            "pod_subnet": f"10.88.{index}.0/24"}


def up(dir: Path) -> dict:
    """Start everything; return (and write to DIR/runtimes.json) what tests need."""
    dir = Path(dir).resolve()
    down(dir)  # a leftover from an aborted run: never leave two sets of daemons
    for sub in OWNED_SUBDIRS:  # fresh state each time; other files in dir are the caller's
        shutil.rmtree(dir / sub, ignore_errors=True)
    dir.mkdir(parents=True, exist_ok=True)
    ensure_packages()
    try:
        return start_all(dir)
    except BaseException:
        down(dir)  # logs stay in dir; the error already carries their tail
        raise


def start_all(dir: Path) -> dict:
    tar = build_image(dir / "image")
    reg_pid, reg_port = start_registry(dir, dir / "image" / "oci")
    registry = f"127.0.0.1:{reg_port}"
    info = {"dir": str(dir), "images": {"pause": PAUSE_IMAGE, "busybox": BUSYBOX_IMAGE},
            "registry": {"address": registry, "host": REGISTRY_HOST, "pid": reg_pid,
                         "images": {"busybox": REGISTRY_BUSYBOX},
                         "log": str(dir / "registry" / "registry.log")},
            "instances": {}}
    # Both start before either is waited for: their start-up overlaps.
    for index, (name, runtime) in enumerate(INSTANCES.items(), start=1):
        info["instances"][name] = start_instance(dir, index, name, runtime, registry)
    for inst in info["instances"].values():
        inst["version"] = wait_cri(Path(inst["socket"]), inst["pid"], Path(inst["log"]))
        import_images(Path(inst["socket"]), tar)
        wait_images(Path(inst["socket"]), (PAUSE_IMAGE, BUSYBOX_IMAGE))
    (dir / "runtimes.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------- teardown


def read_pidfile(path: Path) -> tuple[int, int | None] | None:
    try:
        pid, start = path.read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid), (None if start == "None" else int(start))


def all_procs() -> dict[int, tuple[int, list[str]]]:
    """pid -> (ppid, argv) for every process we can see."""
    procs = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int(p.joinpath("stat").read_text().rpartition(")")[2].split()[1])
            argv = p.joinpath("cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        procs[int(p.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return procs


def shim_trees(sock: str) -> tuple[list[int], list[int]]:
    """Shims of one instance (their command line names its socket) and all their
    descendants, i.e. the containers' processes."""
    procs = all_procs()
    shims = [pid for pid, (_, argv) in procs.items()
             if argv and os.path.basename(argv[0]).startswith("containerd-shim")
             and sock in argv]
    descendants: list[int] = []
    todo = list(shims)
    while todo:
        parent = todo.pop()
        children = [pid for pid, (ppid, _) in procs.items() if ppid == parent]
        descendants += children
        todo += children
    return shims, descendants


def stop(pids: list[tuple[int, int | None]],
         signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGKILL)) -> None:
    """Signal all, wait (bounded) for all; escalate. Only pids whose start time still
    matches are touched, so a recycled pid is never hit."""
    for sig in signals:
        live = [(pid, start) for pid, start in pids if alive(pid, start)]
        for pid, _ in live:
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(alive(*p) for p in live) and time.monotonic() < deadline:
            time.sleep(0.05)


def remove_pods(sock: Path) -> None:
    """Let containerd stop its own pods first: shims exit and unmount cleanly."""
    import grpc
    from cri_api.v1 import api_pb2 as pb, api_pb2_grpc

    with grpc.insecure_channel(f"unix://{sock}") as ch:
        rt = api_pb2_grpc.RuntimeServiceStub(ch)
        for pod in rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items:
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=30)
            rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=30)


def stop_instance(d: Path) -> None:
    sock = str(d / "containerd.sock")
    pid = read_pidfile(d / "pid")
    if pid and alive(*pid) and Path(sock).exists():
        try:
            remove_pods(Path(sock))
        except Exception as err:  # best effort: the kills below still clean up
            print(f"warning: removing pods via {sock}: {err}", file=sys.stderr)
    if pid:
        stop([pid])
    # What is left: shims of a dead containerd and their containers. Containers first and
    # at once with SIGKILL (a pid-namespace init ignores SIGTERM), so none gets reparented.
    shims, containers = shim_trees(sock)
    stop([(p, proc_start_time(p)) for p in containers], (signal.SIGKILL,))
    stop([(p, proc_start_time(p)) for p in shims])
    (d / "pid").unlink(missing_ok=True)
    remove_cgroups(d)
    delete_bridge(d)


def cgroup_mounts() -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [ln.split()[4] for ln in lines if ln.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")]


def remove_cgroups(d: Path) -> None:
    """Containers killed behind containerd's back leave empty cgroups (/k8s.io/<id> in every
    hierarchy). Their paths are in the bundles; rmdir removes only empty ones."""
    for cfg in d.glob("state/io.containerd.runtime.v2.task/*/*/config.json"):
        try:
            path = json.loads(cfg.read_text()).get("linux", {}).get("cgroupsPath", "")
        except (OSError, ValueError):
            continue
        if not path.startswith("/"):  # not a cgroupfs path (e.g. systemd slice:prefix:name)
            continue
        for mount in cgroup_mounts():
            with contextlib.suppress(OSError):
                os.rmdir(mount + path)


def remove_cgroup_tree(root: str) -> None:
    """rmdir the (by now empty) pod cgroup parents under `root` (a kubelet-like
    cgroup_parent prefix), in every hierarchy: runc and crun remove a container's own
    cgroup, never the parent made for it."""
    for mount in cgroup_mounts():
        top = Path(mount + root)
        if not top.is_dir():
            continue
        dirs = [p for p in top.rglob("*") if p.is_dir()] + [top]
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()


def delete_bridge(d: Path) -> None:
    """The bridge plugin never deletes its bridge; the name is in the instance's conflist."""
    try:
        conf = json.loads((d / "cni" / "10-criproxy.conflist").read_text())
    except (OSError, ValueError):
        return
    bridge = conf["plugins"][0]["bridge"]
    if Path("/sys/class/net", bridge).exists():
        subprocess.run(["ip", "link", "del", bridge], check=False)


def unmount_under(dir: Path) -> None:
    """Lazily unmount every mount point under dir, deepest first."""
    prefix = str(dir) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
        if point.startswith(prefix) or point == str(dir):
            points.append(point)
    for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)


def down(dir: Path) -> None:
    """Stop what up() started in dir, unmount what is left; safe to run again."""
    dir = Path(dir).resolve()
    for name in INSTANCES:
        if (dir / f"containerd-{name}").is_dir():
            stop_instance(dir / f"containerd-{name}")
    reg = read_pidfile(dir / "registry" / "pid")
    if reg:
        stop([reg])
        (dir / "registry" / "pid").unlink(missing_ok=True)
    unmount_under(dir)
    (dir / "runtimes.json").unlink(missing_ok=True)


# ---------------------------------------------------------------- restart


def stop_daemon(dir: Path, name: str) -> None:
    """Stop only instance `name`'s containerd (SIGTERM, then SIGKILL after 10 s). Its shims
    and containers keep running, as on a node whose runtime restarts; start_daemon brings it
    back, and it finds them again."""
    d = Path(dir).resolve() / f"containerd-{name}"
    pid = read_pidfile(d / "pid")
    if pid:
        stop([pid])
    (d / "pid").unlink(missing_ok=True)


def start_daemon(dir: Path, name: str) -> dict:
    """Start instance `name`'s containerd again with its config (same socket, same streaming
    port) and wait for CRI Version. Updates and returns its entry in DIR/runtimes.json."""
    dir = Path(dir).resolve()
    info = json.loads((dir / "runtimes.json").read_text())
    inst = info["instances"][name]
    d = Path(inst["dir"])
    if read_pidfile(d / "pid") and alive(*read_pidfile(d / "pid")):
        raise RuntimeError(f"containerd {name} is running already")
    log = Path(inst["log"])
    inst["pid"] = spawn(["containerd", "--config", str(d / "config.toml")], log, d / "pid")
    inst["version"] = wait_cri(Path(inst["socket"]), inst["pid"], log)
    (dir / "runtimes.json").write_text(json.dumps(info, indent=2))
    return inst


def restart_instance(dir: Path, name: str) -> dict:
    """stop_daemon, then start_daemon: containerd `name` restarts under its clients."""
    stop_daemon(dir, name)
    return start_daemon(dir, name)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit(f"usage: {sys.argv[0]} up|down DIR")
    if sys.argv[1] == "up":
        started = time.monotonic()
        info = up(Path(sys.argv[2]))
        print(json.dumps(info, indent=2))
        print(f"up in {time.monotonic() - started:.1f}s", file=sys.stderr)
    else:
        down(Path(sys.argv[2]))


if __name__ == "__main__":
    main()
