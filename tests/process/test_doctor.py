"""`criproxy doctor`'s systemd checks (issue 19 item 8): criproxy.service active while
nothing serves its socket, a restart loop, and a kubelet drop-in naming a unit or
socket that is gone.

Each test builds a tree (etc/systemd/system, run/systemd/system, ...) under a tmp
root and answers `systemctl show` with a fake (an injected function, or a script for
the whole command), so no real systemd is needed.
"""
from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Iterator

import pytest

from criproxy.ops import doctor, doctor_systemd
from criproxy.ops.doctor import FAIL, OK, WARN, Finding
from criproxy.ops.doctor_systemd import UnitState, check_drop_ins, check_unit, unit_state
from tests.support.fakeruntime import FakeRuntime, start_fake
from tests.support.harness import short_dir

ACTIVE = {"LoadState": "loaded", "ActiveState": "active", "SubState": "running",
          "MainPID": "812", "NRestarts": "0", "Result": "success"}
DROP_IN = "etc/systemd/system/kubelet.service.d/20-criproxy.conf"


@pytest.fixture
def root() -> Iterator[Path]:
    """A short-pathed tree standing for / (unix socket paths max out at 107 bytes)."""
    path = short_dir("cpd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def runtime() -> Iterator[FakeRuntime]:
    path = short_dir("cpdr-")
    fake = start_fake(path, "primary")
    yield fake
    fake.stop()
    shutil.rmtree(path, ignore_errors=True)


def booted(root: Path) -> Path:
    """Make `root` look like a node whose PID 1 is systemd."""
    (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    return root


def fake_systemctl(**props: str):
    """A systemctl answering `show` with ACTIVE overridden by `props`; records its calls."""
    calls: list[list[str]] = []

    def run(args: list[str]) -> str:
        calls.append(args)
        return "".join(f"{k}={v}\n" for k, v in {**ACTIVE, **props}.items())
    run.calls = calls  # type: ignore[attr-defined]
    return run


def serve(path: Path) -> socket.socket:
    """A socket that accepts connections at `path` (all probe_socket asks of it)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    return listener


def stale(path: Path) -> Path:
    """A socket file nobody listens on: a crashed server's."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    return path


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def drop_in(root: Path, listen: Path, dep: str = "Wants") -> Path:
    return write(root, DROP_IN, f"[Unit]\n{dep}=criproxy.service\nAfter=criproxy.service\n\n"
                                "[Service]\nEnvironment=\"KUBELET_EXTRA_ARGS="
                                f"--container-runtime-endpoint=unix://{listen} "
                                f"--image-service-endpoint=unix://{listen}\"\n")


def levels(found: list[Finding]) -> list[str]:
    return [f.level for f in found]


# --- the unit's state -------------------------------------------------------------------

def test_unit_state_asks_systemctl_show_for_the_unit(root: Path) -> None:
    systemctl = fake_systemctl(SubState="auto-restart", ActiveState="activating", NRestarts="7")
    state = unit_state(booted(root), systemctl)
    assert systemctl.calls == [["show", "criproxy.service", "-p",
                                "LoadState,ActiveState,SubState,MainPID,NRestarts,Result"]]
    assert state == UnitState("loaded", "activating", "auto-restart", 812, 7, "success")


def test_active_unit_with_nothing_serving_fails(root: Path) -> None:
    listen = root / "criproxy.sock"
    state = unit_state(booted(root), fake_systemctl())
    found = check_unit(state, str(listen))
    assert levels(found) == [FAIL], found
    assert "criproxy.service is active (running, main pid 812) but nothing serves its " \
           f"listen socket: {listen} does not exist" in found[0].text
    assert "journalctl -u criproxy" in found[0].fix
    found = check_unit(state, str(stale(listen)))  # a socket file, but nobody listens
    assert levels(found) == [FAIL] and "a stale socket" in found[0].text


def test_active_unit_serving_is_ok_and_its_crash_restarts_are_a_warning(root: Path) -> None:
    listen = root / "criproxy.sock"
    with serve(listen):
        found = check_unit(unit_state(booted(root), fake_systemctl()), str(listen))
        assert [str(f) for f in found] == [
            f"ok   criproxy.service is active (running, main pid 812) and serves {listen}"]
        found = check_unit(unit_state(root, fake_systemctl(NRestarts="3")), str(listen))
    assert levels(found) == [WARN] and "restarted it 3 time(s)" in found[0].text


def test_restart_loop_and_failed_unit_fail(root: Path) -> None:
    booted(root)
    loop = fake_systemctl(ActiveState="activating", SubState="auto-restart", NRestarts="41",
                          MainPID="0")
    found = check_unit(unit_state(root, loop), str(root / "criproxy.sock"))
    assert levels(found) == [FAIL] and "restart loop" in found[0].text and "41" in found[0].text
    failed = fake_systemctl(ActiveState="failed", SubState="failed", Result="exit-code")
    found = check_unit(unit_state(root, failed), str(root / "criproxy.sock"))
    assert levels(found) == [FAIL] and "failed (exit-code)" in found[0].text


def test_inactive_or_uninstalled_unit_leaves_it_to_the_listen_check(root: Path) -> None:
    booted(root)
    for props in ({"ActiveState": "inactive", "SubState": "dead", "MainPID": "0"},
                  {"LoadState": "not-found", "ActiveState": "inactive"}):
        state = unit_state(root, fake_systemctl(**props))
        assert state is not None and not state.explains_listen
        assert check_unit(state, str(root / "criproxy.sock")) == []


def test_without_systemd_the_unit_check_is_skipped(root: Path) -> None:
    listen = str(root / "criproxy.sock")
    systemctl = fake_systemctl()  # would say active while nothing serves
    assert unit_state(root, systemctl) is None and systemctl.calls == []  # no run/systemd/system
    missing = doctor_systemd.run_systemctl(str(root / "no-systemctl"))
    assert unit_state(booted(root), missing) is None  # systemctl absent
    assert levels(check_unit(None, listen)) == [OK]


# --- the whole command: the listen check's advice follows the unit ----------------------

def fake_systemctl_command(root: Path, **props: str) -> Path:
    """An executable systemctl printing `show`'s answer, for `criproxy doctor --systemctl`."""
    answer = "".join(f"{k}={v}\n" for k, v in {**ACTIVE, **props}.items())
    script = write(root, "bin/systemctl", f"#!/bin/sh\ncat <<'EOF'\n{answer}EOF\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def run_doctor(root: Path, runtime: FakeRuntime, systemctl: Path,
               capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = doctor.main(["-connect", str(runtime.socket), "-listen", str(root / "criproxy.sock"),
                        "-rundir", str(root / "rundir"), "--proc", str(root / "proc"),
                        "--kubelet-config", str(root / "none.yaml"), "--root", str(root),
                        "--systemctl", str(systemctl)])
    return code, capsys.readouterr().out


def test_doctor_fails_an_active_unit_that_serves_nothing(root: Path, runtime: FakeRuntime,
                                                         capsys: pytest.CaptureFixture) -> None:
    (root / "proc").mkdir()
    code, out = run_doctor(booted(root), runtime, fake_systemctl_command(root), capsys)
    print(out)
    assert code == 1, out
    assert "FAIL criproxy.service is active (running, main pid 812) but nothing serves" in out
    assert "systemctl start criproxy" not in out  # the unit is started: wrong advice


def test_doctor_says_start_it_for_an_inactive_unit(root: Path, runtime: FakeRuntime,
                                                   capsys: pytest.CaptureFixture) -> None:
    (root / "proc").mkdir()
    systemctl = fake_systemctl_command(root, ActiveState="inactive", SubState="dead")
    code, out = run_doctor(booted(root), runtime, systemctl, capsys)
    print(out)
    assert code == 0 and "FAIL" not in out, out
    assert "WARN criproxy is not running: no socket at" in out
    assert "fix: start it: systemctl start criproxy" in out


def test_doctor_without_systemd_does_not_fail(root: Path, runtime: FakeRuntime,
                                              capsys: pytest.CaptureFixture) -> None:
    (root / "proc").mkdir()
    code, out = run_doctor(root, runtime, fake_systemctl_command(root), capsys)
    print(out)
    assert code == 0 and "FAIL" not in out, out
    assert "ok   no systemd to ask about criproxy.service: its state not checked" in out
    assert "start it: systemctl start criproxy" in out


def test_doctor_fails_a_drop_in_left_behind_by_a_removed_unit(
        root: Path, runtime: FakeRuntime, capsys: pytest.CaptureFixture) -> None:
    (root / "proc").mkdir()
    path = drop_in(root, root / "criproxy.sock", "Requires")  # no unit file: dpkg -r'd
    code, out = run_doctor(root, runtime, fake_systemctl_command(root), capsys)
    print(out)
    assert code == 1, out
    assert f"FAIL kubelet drop-in {path} names Requires=/After= criproxy.service, which is " \
           "not installed: kubelet will not start" in out
    assert f"FAIL kubelet drop-in {path} points kubelet at unix://{root}/criproxy.sock" in out


# --- kubelet's drop-in ------------------------------------------------------------------

@pytest.mark.parametrize("dep, effect", [("Requires", "kubelet will not start"),
                                         ("Wants", "kubelet starts without it")])
def test_drop_in_naming_a_missing_unit_fails(root: Path, dep: str, effect: str) -> None:
    listen = root / "criproxy.sock"
    path = drop_in(root, listen, dep)
    with serve(listen):
        found = check_drop_ins(root, str(listen))
    units = [f for f in found if "criproxy.service" in f.text]
    assert levels(units) == [FAIL], found
    assert f"names {dep}=/After= criproxy.service, which is not installed: {effect}" \
        in units[0].text
    assert f"rm {path} && systemctl daemon-reload" in units[0].fix


def test_drop_in_naming_a_masked_unit_fails(root: Path) -> None:
    listen = root / "criproxy.sock"
    drop_in(root, listen, "Requires")
    write(root, "lib/systemd/system/criproxy.service", "[Service]\n")
    (root / "etc/systemd/system/criproxy.service").symlink_to("/dev/null")
    with serve(listen):
        found = check_drop_ins(root, str(listen))
    assert levels(found)[0] == FAIL and "which is masked" in found[0].text, found


def test_drop_in_whose_endpoint_socket_is_gone_fails(root: Path) -> None:
    listen = root / "criproxy.sock"
    path = drop_in(root, listen)
    write(root, "lib/systemd/system/criproxy.service", "[Service]\n")
    found = check_drop_ins(root, str(listen))
    assert levels(found) == [OK, FAIL], found  # the unit is there; its socket is not
    assert f"kubelet drop-in {path} points kubelet at unix://{listen}: {listen} does not " \
           "exist" in found[1].text
    assert found[1].fix == "start criproxy: systemctl start criproxy"
    found = check_drop_ins(root, str(stale(listen)))
    assert levels(found) == [OK, FAIL] and "a stale socket" in found[1].text


def test_drop_in_pointing_elsewhere_says_where(root: Path) -> None:
    listen, other = root / "criproxy.sock", root / "other.sock"
    drop_in(root, other)
    write(root, "usr/lib/systemd/system/criproxy.service", "[Service]\n")
    found = check_drop_ins(root, str(listen))
    assert levels(found) == [OK, FAIL], found  # gone
    assert f"point it at unix://{listen}" in found[1].fix
    with serve(other):  # served, but past criproxy
        found = check_drop_ins(root, str(listen))
    assert levels(found) == [OK, WARN], found
    assert f"not criproxy's listen socket {listen}" in found[1].text


def test_healthy_drop_in_is_ok(root: Path) -> None:
    listen = root / "criproxy.sock"
    path = drop_in(root, listen, "Requires")
    unit = write(root, "etc/systemd/system/criproxy.service", "[Service]\n")
    write(root, "run/systemd/system/kubelet.service.d/10-other.conf", "[Service]\nNice=1\n")
    with serve(listen):
        found = check_drop_ins(root, str(listen))
    assert [str(f) for f in found] == [
        f"ok   kubelet drop-in {path}: Requires=/After= criproxy.service ({unit})",
        f"ok   kubelet drop-in {path} points kubelet at unix://{listen}, which is served"]


def test_no_drop_in_naming_criproxy_says_nothing(root: Path) -> None:
    write(root, "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
          "[Service]\nEnvironment=\"KUBELET_EXTRA_ARGS=--container-runtime-endpoint="
          f"unix://{root}/gone.sock\"\n")
    assert check_drop_ins(root, str(root / "criproxy.sock")) == []
    assert not os.path.exists(root / "run/systemd")  # and nothing was created
