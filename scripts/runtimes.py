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

The parts live beside this file, one job each, and every name they had here is still
importable from here: debpackages.py (apt-get), ociimage.py (the busybox images),
procs.py (pids, daemons, unmounts), cgroups.py (leftover cgroups), containerd_instance.py
(one containerd's config, start and stop). Loaded by path (tests/support/harness.runtimes_script),
this file puts its own directory on sys.path so that they import.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from cgroups import cgroup_mounts, remove_cgroup_tree, remove_cgroups  # noqa: E402,F401
from containerd_instance import (  # noqa: E402,F401
    MAX_SOCKET_PATH, MIRRORED_HOSTS, containerd_config, cri_version, crun_wrapper,
    delete_bridge, import_images, remove_pods, shim_trees, start_instance, stop_instance,
    wait_cri, wait_images, write_cni, write_hosts)
from debpackages import (  # noqa: E402,F401
    APT_LOCK_TIMEOUT, BUSYBOX, CNI_BIN_DIR, DPKG_LOCKS, PACKAGES, apt_install, ensure_packages,
    is_static_elf, lock_holders, wait_for_apt_locks)
from ociimage import (  # noqa: E402,F401
    BUSYBOX_IMAGE, CREATED, PAUSE_IMAGE, REGISTRY_BUSYBOX, REGISTRY_HOST, add_blob,
    build_image, busybox_layer, image_config)
from procs import (  # noqa: E402,F401
    START_TIMEOUT, STOP_TIMEOUT, alive, all_procs, free_port, proc_start_time, read_pidfile,
    spawn, stop, tail, unmount_under)

# name -> OCI runtime binary; the runtime handler name of each instance is the same word.
INSTANCES = {"a": "runc", "b": "crun"}
OWNED_SUBDIRS = ("image", "registry", *(f"containerd-{name}" for name in INSTANCES))


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
