"""One containerd instance: its config (CNI, registry mirrors, runtime), start, CRI waits,
image import, and its stop (pods, shims, containers, cgroups, bridge)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cgroups import remove_cgroups
from debpackages import CNI_BIN_DIR
from ociimage import PAUSE_IMAGE, REGISTRY_HOST
from procs import START_TIMEOUT, alive, all_procs, free_port, proc_start_time, read_pidfile, \
    spawn, stop, tail

# Hosts whose pulls go to the local registry: the made-up one for PullImage tests, and the
# real ones so that nothing (e.g. a missing sandbox image) ever tries to leave the machine.
MIRRORED_HOSTS = (REGISTRY_HOST, "docker.io", "registry.k8s.io")
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes; ".ttrpc" is appended


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


def delete_bridge(d: Path) -> None:
    """The bridge plugin never deletes its bridge; the name is in the instance's conflist."""
    try:
        conf = json.loads((d / "cni" / "10-criproxy.conflist").read_text())
    except (OSError, ValueError):
        return
    bridge = conf["plugins"][0]["bridge"]
    if Path("/sys/class/net", bridge).exists():
        subprocess.run(["ip", "link", "del", bridge], check=False)

