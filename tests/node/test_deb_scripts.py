"""The package's maintainer scripts on a node where systemd runs: what they ask of it.

Test machines run no systemd, so each script runs in a private mount namespace
whose /run is a fresh tmpfs holding /run/systemd/system (the scripts' sign of a
running systemd) and whose /etc/systemd/system is an empty tmpfs, with stand-ins
for systemctl, deb-systemd-invoke and deb-systemd-helper that record their calls.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.node.debpackage import TEST_LOCK, locked
from tests.support.harness import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: mounts in a private mount namespace")

SCRIPTS = REPO / "packaging" / "deb"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
RELOAD = "systemctl --system daemon-reload"
STUB = """#!/bin/sh
echo "${0##*/} $*" >> "$STUB_LOG"
case "$*" in *is-active*) exit "$STUB_ACTIVE";; esac
"""


def run_script(tmp: Path, script: str, *args: str, systemd: bool = True,
               active: bool = False, before: str = "true", then: str = "true") -> list[str]:
    """Run packaging/deb/SCRIPT ARGS; the calls it made, in order. `before` and `then`
    run before and after it, in the same namespace, and must succeed."""
    stubs = tmp / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("systemctl", "deb-systemd-invoke", "deb-systemd-helper"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp / "calls"
    log.unlink(missing_ok=True)
    log.touch()
    setup = "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /etc/systemd/system"
    if systemd:
        setup += " && mkdir -p /run/systemd/system"
    inner = (f'{setup} && mkdir /run/criproxy && {before} && sh {SCRIPTS / script} "$@" '
             f'&& {then}')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", inner, "sh", *args],
                          env={"PATH": f"{stubs}:{SYSTEM_PATH}", "STUB_LOG": str(log),
                               "STUB_ACTIVE": "0" if active else "3"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines()


@pytest.fixture(autouse=True)
def no_package_installed() -> Iterator[None]:
    """The scripts work on /usr/lib/criproxy and /etc/criproxy: they must not be a real
    install's, nor become one's while a test runs (tests/node/test_deb.py takes the same lock)."""
    with locked(TEST_LOCK):
        for path in ("/usr/lib/criproxy", "/etc/criproxy"):
            if Path(path).exists():
                pytest.fail(f"{path} exists (criproxy is installed): these tests would change it")
        yield


def test_fresh_install_reloads_systemd_and_starts_nothing(tmp_path: Path) -> None:
    calls = run_script(tmp_path, "postinst", "configure", "", active=True)
    assert calls == ["deb-systemd-helper update-state criproxy.service", RELOAD]


def test_upgrade_restarts_a_running_criproxy(tmp_path: Path) -> None:
    calls = run_script(tmp_path, "postinst", "configure", "0.1.0", active=True)
    assert calls == ["deb-systemd-helper update-state criproxy.service", RELOAD,
                     "systemctl --quiet is-active criproxy.service",
                     "deb-systemd-invoke restart criproxy.service"]


def test_upgrade_leaves_a_stopped_criproxy_stopped(tmp_path: Path) -> None:
    calls = run_script(tmp_path, "postinst", "configure", "0.1.0", active=False)
    assert "deb-systemd-invoke restart criproxy.service" not in calls
    assert RELOAD in calls


def test_without_systemd_no_systemctl_call(tmp_path: Path) -> None:
    for script, args in (("postinst", ("configure", "0.1.0")), ("prerm", ("remove",)),
                         ("postrm", ("remove",)), ("postrm", ("purge",))):
        calls = run_script(tmp_path, script, *args, systemd=False, active=True)
        assert [c for c in calls if c.split()[0] != "deb-systemd-helper"] == [], script


def test_removal_stops_criproxy_and_upgrade_does_not(tmp_path: Path) -> None:
    assert run_script(tmp_path, "prerm", "remove") == ["deb-systemd-invoke stop criproxy.service"]
    assert run_script(tmp_path, "prerm", "upgrade", "0.1.1") == []
    assert run_script(tmp_path, "postrm", "remove") == [RELOAD]


def test_removal_takes_criproxy_out_of_kubelets_path_without_restarting_it(
        tmp_path: Path) -> None:
    drop_in = "/etc/systemd/system/kubelet.service.d/20-criproxy.conf"
    other = "/etc/systemd/system/kubelet.service.d/10-other.conf"
    write = f"mkdir -p {drop_in.rsplit('/', 1)[0]} && touch {drop_in} {other}"
    calls = run_script(tmp_path, "postrm", "remove", before=write,
                       then=f"test ! -e {drop_in} && test -e {other}")
    assert calls == [RELOAD]  # no restart of kubelet, nor of anything else


def test_purge_removes_the_enable_links_and_the_runtime_dir(tmp_path: Path) -> None:
    calls = run_script(tmp_path, "postrm", "purge", then="test ! -e /run/criproxy")
    assert calls == ["deb-systemd-helper purge criproxy.service",
                     "deb-systemd-helper unmask criproxy.service", RELOAD]
