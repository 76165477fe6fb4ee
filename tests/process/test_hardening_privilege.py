"""Hardening (issue 8): local privilege.

criproxy runs as root and whoever talks to it (or to its workers) can start
containers as root, so:

- the listen socket is mode 0660, in the group given by -socketGroup;
- the runtime dir is 0700 and owned by root, and holds the ZeroMQ ipc sockets
  of the workers (0600) and supervisord's control socket; a runtime dir that
  exists with another owner or mode, or is a symlink, is refused at start
  (exit code 2, a clear message, nothing started);
- an unprivileged user is refused by the OS (EACCES) at every socket; a
  member of the socket group reaches the listen socket, and only it;
- no inet socket listens, except the metrics endpoint when configured
  (loopback in these tests).

Needs root (it creates a group and runs clients as `nobody`).
"""
from __future__ import annotations

import grp
import json
import os
import resource
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from criproxy.settings import load_settings_file
from tests.process.cluster import STREAM_URL, Cluster, stop_cluster
from tests.support.fakeruntime import start_fake
from tests.support.harness import REPO, process_tree, short_dir, start_proxy
from tests.support.observing import metrics_address

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

RUNTIMES = ("primary", "alt", "vm.cloud")
UNPRIVILEGED = ["setpriv", "--reuid=nobody", "--regid=nogroup"]
# The system python: the venv's may live where `nobody` cannot read it.
USER_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
WAIT = 60.0

# Run as another user: try to connect to each path, report errno names as JSON.
CONNECT_CLIENT = r"""
import errno, json, socket, sys
out = {}
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        out[path] = "connected"
    except OSError as err:
        out[path] = errno.errorcode.get(err.errno, str(err.errno))
    finally:
        s.close()
print(json.dumps(out))
"""


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group() -> Iterator[grp.struct_group]:
    """A temporary system group for -socketGroup, deleted afterwards."""
    name = f"crpx{secrets.token_hex(4)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=WAIT)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], capture_output=True, timeout=WAIT)


def start_open_cluster(*proxy_args: str) -> Cluster:
    """Like cluster.start_cluster, in a world-traversable (0755) directory, so that
    only the sockets' own modes and the runtime dir's guard them."""
    base = short_dir("cph-")
    os.chmod(base, 0o755)
    fakes = {name: start_fake(base, name) for name in RUNTIMES}
    connect = (f"{fakes['primary'].socket},alt:{fakes['alt'].socket},"
               f"vm.cloud:{fakes['vm.cloud'].socket}")
    try:
        proxy = start_proxy(connect, "-streamUrl", STREAM_URL, *proxy_args, workdir=base,
                            wait_for=list(fakes))
    except BaseException:
        for fake in fakes.values():
            fake.stop()
        raise
    return Cluster(proxy, fakes, base)


@pytest.fixture(scope="module")
def pc(group: grp.struct_group) -> Iterator[Cluster]:
    cluster = start_open_cluster("-socketGroup", group.gr_name)
    yield cluster
    stop_cluster(cluster)


def worker_sockets(cluster: Cluster) -> list[Path]:
    config = load_settings_file(str(cluster.proxy.rundir / "settings.json"))
    return [Path(config.worker_socket(runtime)) for runtime in config.runtimes]


def supervisord_socket(cluster: Cluster) -> Path:
    return cluster.proxy.rundir / "supervisor.sock"


def connect_as(user_args: list[str], paths: list[Path]) -> dict[str, str]:
    done = subprocess.run([*user_args, USER_PYTHON, "-c", CONNECT_CLIENT, *map(str, paths)],
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- modes and owners -------------------------------------------------------------------


def test_listen_socket_is_0660_in_the_socket_group(pc: Cluster,
                                                   group: grp.struct_group) -> None:
    info = os.stat(pc.proxy.listen)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660, oct(info.st_mode)
    assert (info.st_uid, info.st_gid) == (0, group.gr_gid)


def test_runtime_dir_is_private_and_holds_every_internal_socket(pc: Cluster) -> None:
    rundir = pc.proxy.rundir
    info = os.lstat(rundir)
    assert stat.S_ISDIR(info.st_mode) and not stat.S_ISLNK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    assert info.st_uid == 0
    internal = [*worker_sockets(pc), supervisord_socket(pc)]
    assert len(internal) == len(RUNTIMES) + 1
    for path in internal:
        assert path.parent == rundir, path
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode), path
        assert stat.S_IMODE(mode) & 0o077 == 0, (path, oct(mode))
    for path in worker_sockets(pc):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    for name in ("settings.json", "supervisord.conf"):
        assert stat.S_IMODE(os.stat(rundir / name).st_mode) == 0o600, name
    for entry in rundir.iterdir():
        mode = os.lstat(entry).st_mode
        assert not stat.S_ISLNK(mode), entry
        assert stat.S_IMODE(mode) & 0o022 == 0, f"{entry} is writable by others: {oct(mode)}"


# --- other users ----------------------------------------------------------------------------


def test_unprivileged_user_is_refused_at_every_socket(pc: Cluster, tmp_path: Path) -> None:
    # The control: a socket anyone may use, in a directory anyone may traverse. If
    # `nobody` reaches it, the refusals below come from our modes, not the harness.
    control_dir = short_dir("cpo-")
    os.chmod(control_dir, 0o755)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control_path = control_dir / "open.sock"
    try:
        control.bind(str(control_path))
        os.chmod(control_path, 0o777)
        control.listen(4)
        targets = [pc.proxy.listen, *worker_sockets(pc), supervisord_socket(pc)]
        got = connect_as([*UNPRIVILEGED, "--clear-groups"], [control_path, *targets])
    finally:
        control.close()
        shutil.rmtree(control_dir, ignore_errors=True)
    assert got.pop(str(control_path)) == "connected"
    assert got == {str(path): "EACCES" for path in targets}, got


def test_unprivileged_user_cannot_read_the_runtime_dir(pc: Cluster) -> None:
    probe = ("import sys\nfor p in sys.argv[1:]:\n"
             "    try:\n        open(p).read(); print(p, 'READ')\n"
             "    except PermissionError:\n        print(p, 'EACCES')\n")
    paths = [pc.proxy.rundir / name for name in ("settings.json", "status.json",
                                                 "supervisord.conf")]
    done = subprocess.run([*UNPRIVILEGED, "--clear-groups", USER_PYTHON, "-c", probe,
                           *map(str, paths)], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [word for p in paths for word in (str(p), "EACCES")]


def test_socket_group_member_reaches_the_listen_socket_only(pc: Cluster,
                                                            group: grp.struct_group) -> None:
    internal = [*worker_sockets(pc), supervisord_socket(pc)]
    got = connect_as([*UNPRIVILEGED, f"--groups={group.gr_gid}"],
                     [pc.proxy.listen, *internal])
    assert got == {str(pc.proxy.listen): "connected",
                   **{str(path): "EACCES" for path in internal}}, got


# --- network ------------------------------------------------------------------------------


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:["):-1]))
    return inodes


def inet_sockets() -> list[tuple[str, str, str, int]]:
    """(table, local address, state, inode) of every inet socket on this host."""
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            found.append((table, fields[1], fields[3], int(fields[9])))
    return found


def proxy_inet_sockets(cluster: Cluster) -> dict[int, list[tuple[str, str, str, int]]]:
    """The proxy's processes (supervisord, front, workers) and their inet sockets."""
    pids = process_tree(cluster.proxy.proc.pid)
    assert {cluster.proxy.front_pid(), *(cluster.proxy.worker_pid(r) for r in RUNTIMES)} <= set(pids)
    table = inet_sockets()
    return {pid: [s for s in table if s[3] in socket_inodes(pid)] for pid in pids}


LISTEN = "0A"
LOOPBACK_V4 = "0100007F"


def test_only_inet_listener_is_the_loopback_metrics_endpoint(pc: Cluster) -> None:
    # The harness serves metrics on 127.0.0.1, any port.
    owned = proxy_inet_sockets(pc)
    listening = {pid: [s for s in found if s[0].startswith("tcp") and s[2] == LISTEN]
                 for pid, found in owned.items()}
    listening = {pid: found for pid, found in listening.items() if found}
    assert list(listening) == [pc.proxy.front_pid()], listening
    [(table, local, _state, _inode)] = listening[pc.proxy.front_pid()]
    address, port = local.split(":")
    assert (table, address) == ("tcp", LOOPBACK_V4), local
    assert int(port, 16) == int(metrics_address(pc.proxy).rpartition(":")[2]), pc.proxy.status()
    udp = [s for found in owned.values() for s in found if s[0].startswith("udp")]
    assert udp == [], udp


def test_no_inet_socket_at_all_without_metrics() -> None:
    cluster = start_open_cluster("-metricsAddress", "off")
    try:
        owned = proxy_inet_sockets(cluster)
        assert {pid: found for pid, found in owned.items() if found} == {}
    finally:
        stop_cluster(cluster)


HOARDER = r"""
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    try:
        held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2))
    except OSError:
        break
print(len(held), flush=True)
sys.stdin.readline()
"""


def test_unprivileged_user_cannot_use_up_the_fronts_descriptors() -> None:
    """Regression: idle connections to the loopback metrics port (open to every local
    user) used up the front's descriptors (systemd's default soft limit: 1024): it
    could then accept neither kubelet nor its workers, and logged a traceback for
    every refused accept. The endpoint now serves MAX_SCRAPES at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        cluster = start_open_cluster()  # inherits the limit, as under systemd
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    hoarder = None
    try:
        front = cluster.proxy.front_pid()
        port = metrics_address(cluster.proxy).rpartition(":")[2]
        hoarder = subprocess.Popen([*UNPRIVILEGED, "--clear-groups", USER_PYTHON, "-c", HOARDER,
                                    port, "1100"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        assert int(hoarder.stdout.readline()) > 1024 - 64  # the front's table could fill
        held_fds = len(os.listdir(f"/proc/{front}/fd"))
        assert held_fds < 512, held_fds
        # kubelet (re)connecting meanwhile is served.
        with grpc.insecure_channel(f"unix://{cluster.proxy.listen}") as channel:
            listed = channel.unary_unary("/runtime.v1.RuntimeService/ListPodSandbox")(
                b"", timeout=WAIT)
        assert listed == b""
        hoarder.communicate("", timeout=WAIT)
        assert "out of system resource" not in cluster.proxy.log()
        assert cluster.proxy.front_pid() == front
    finally:
        if hoarder is not None and hoarder.poll() is None:
            hoarder.kill()
            hoarder.wait(WAIT)
        stop_cluster(cluster)


# --- refusing to start ---------------------------------------------------------------------


def run_criproxy(base: Path, rundir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "criproxy", "-connect", str(base / "primary.sock"),
               "-listen", str(base / "criproxy.sock"), "-rundir", str(rundir),
               "-metricsAddress", "off", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=WAIT)


def _wrong_mode(mode: int):
    def make(rundir: Path) -> None:
        rundir.mkdir()
        os.chmod(rundir, mode)
    return make


def _wrong_owner(rundir: Path) -> None:
    rundir.mkdir(mode=0o700)
    os.chown(rundir, 65534, 65534)


def _symlink(rundir: Path) -> None:
    target = rundir.parent / "elsewhere"
    target.mkdir(mode=0o700)
    rundir.symlink_to(target)


BAD_RUNDIRS = {
    "mode 0755": (_wrong_mode(0o755), "must be owned by uid 0 with mode 0700"),
    "mode 0770": (_wrong_mode(0o770), "must be owned by uid 0 with mode 0700"),
    "mode 0701": (_wrong_mode(0o701), "must be owned by uid 0 with mode 0700"),
    "mode 1777": (_wrong_mode(0o1777), "must be owned by uid 0 with mode 0700"),
    "owned by nobody": (_wrong_owner, "owned by uid 65534"),
    "a symlink": (_symlink, "is a symlink"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNDIRS))
def test_start_is_refused_with_an_unsafe_runtime_dir(case: str) -> None:
    make, says = BAD_RUNDIRS[case]
    base = short_dir("cpr-")
    try:
        rundir = base / "run"
        make(rundir)
        before = os.lstat(rundir)
        started = time.monotonic()
        done = run_criproxy(base, rundir)
        assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
        assert f"runtime dir {rundir}" in done.stderr and says in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr  # one clear line
        # Nothing was started or written; the directory is as it was.
        assert not (base / "criproxy.sock").exists()
        assert sorted(p.name for p in base.iterdir()) in (["run"], ["elsewhere", "run"])
        assert list(Path(os.path.realpath(rundir)).iterdir()) == []
        after = os.lstat(rundir)
        assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
        assert time.monotonic() - started < WAIT
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_start_is_refused_when_the_listen_path_is_not_a_socket() -> None:
    """Root must not delete a file that happens to be at -listen."""
    base = short_dir("cpr-")
    try:
        precious = base / "criproxy.sock"
        precious.write_text("not a socket\n")
        done = run_criproxy(base, base / "run")
        assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
        assert "exists and is not a socket" in done.stderr + done.stdout
        assert precious.read_text() == "not a socket\n"
    finally:
        shutil.rmtree(base, ignore_errors=True)
