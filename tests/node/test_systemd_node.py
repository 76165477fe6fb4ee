"""The operator's path of the README, on the built .deb, under a real systemd:
`dpkg -i`, `criproxy install-systemd`, `systemctl enable --now criproxy`,
restarts, upgrade, remove, purge (the machine and the steps: tests/node/systemd_node.py).
Needs root (nspawn, cgroups): run as another user, the tests fail rather than skip.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.node import nspawn
from tests.node.systemd_node import (
    CALL_TIMEOUT, DROP_IN, ENV_FILE, LISTEN, MAX_EXPOSURE, PRIVATE_PYTHON, SHARE,
    configure_and_start, cri, criproxy_processes, install, installed_and_running, listed_pods,
    main_pid, run_pod, standin_entries, start_kubelet_standin, systemctl, unit_status,
    version_now, wait_serving, wait_standin_ok)
from tests.support.fakeruntime import FakeRuntime, read_journal

# The first test also builds the package, and the root when it is not cached (~1 min each).
pytestmark = pytest.mark.timeout(600)




def test_dpkg_i_starts_nothing(node: nspawn.Machine, share: Path) -> None:
    install(node, share)
    assert node.is_active("criproxy") == "inactive"
    assert node.show("criproxy", "UnitFileState") == "disabled"
    assert not node.host_path(LISTEN).exists()
    assert not node.host_path("/run/criproxy").exists()
    assert not node.host_path(DROP_IN).exists()
    assert criproxy_processes(node) == {}


def test_enable_now_returns_once_criproxy_serves(node: nspawn.Machine, share: Path,
                                                 fakes: dict[str, FakeRuntime]) -> None:
    """Ready means serving: when `systemctl enable --now` (start, restart) returns,
    Version answers at once, and a pod on the second runtime runs at once."""
    install(node, share)
    configure_and_start(node)
    assert node.is_active("criproxy") == "active"
    assert node.show("criproxy", "Type") == "notify"
    version_now(node)
    assert run_pod(node, "alt").startswith("alt__")
    systemctl(node, "stop", "criproxy")
    assert node.is_active("criproxy") == "inactive"
    systemctl(node, "start", "criproxy")
    version_now(node)
    systemctl(node, "restart", "criproxy")
    version_now(node)


def test_a_pod_lands_on_the_runtime_its_annotation_names(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt", "on-alt")
    plain = run_pod(node, "", "on-primary")
    assert pod.startswith("alt__") and "__" not in plain
    for fake, name in (("alt", "on-alt"), ("primary", "on-primary")):
        ran = [e["request"]["config"]["metadata"]["name"]
               for e in read_journal(fakes[fake].journal) if e["method"] == "RunPodSandbox"]
        assert ran == [name], (fake, ran)
    assert listed_pods(node) == sorted([pod, plain])


def test_journal_has_every_process_and_priorities(node: nspawn.Machine, share: Path,
                                                  fakes: dict[str, FakeRuntime]) -> None:
    """`journalctl -u criproxy` has the front's and each worker's lines; `-p err`
    none on a clean start; a failed call's warning shows under -p warning only."""
    installed_and_running(node, share)
    wait_serving(node, 30)
    run_pod(node, "alt")
    lines = node.journal("-u", "criproxy", "-o", "cat")
    assert re.search(r"\bfront\[\d+\]", lines), lines[-3000:]
    for label in ("primary", "alt"):
        assert re.search(rf"\bworker-{label}\[\d+\]", lines), lines[-3000:]
    assert node.journal("-u", "criproxy", "-p", "err") == ""
    with cri(node) as stub, pytest.raises(grpc.RpcError) as failed:
        stub.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="alt__nosuchpod"),
                              timeout=CALL_TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    warning = re.compile(r"PodSandboxStatus -> alt: NOT_FOUND")
    deadline = time.monotonic() + 10
    while not warning.search(node.journal("-u", "criproxy", "-p", "warning")):
        assert time.monotonic() < deadline, node.journal("-u", "criproxy")[-3000:]
        time.sleep(0.2)
    assert not warning.search(node.journal("-u", "criproxy", "-p", "err"))
    assert node.journal("-u", "criproxy", "-p", "err") == ""


def test_every_journal_line_names_its_process(node: nspawn.Machine, share: Path,
                                              fakes: dict[str, FakeRuntime]) -> None:
    """Each line criproxy's processes write says which one wrote it, supervisord's
    own lines too (systemd's lines about the unit are not criproxy's)."""
    installed_and_running(node, share)
    wait_serving(node, 30)
    run_pod(node, "alt")
    systemctl(node, "restart", "criproxy")
    entries = [json.loads(line) for line in
               node.journal("-u", "criproxy", "-o", "json").splitlines()]
    ours = [e["MESSAGE"] for e in entries if e.get("SYSLOG_IDENTIFIER") == "criproxy"]
    named = re.compile(r"^\S+ \S+ [A-Z] (front|worker-[\w.-]+|supervisord)\[\d+\] ")
    unnamed = [m for m in ours if not named.match(m)]
    assert ours and not unnamed, "lines that name no process:\n" + "\n".join(unnamed)


def test_an_error_shows_under_p_err(node: nspawn.Machine, share: Path,
                                    fakes: dict[str, FakeRuntime]) -> None:
    """The metrics port taken: criproxy serves CRI anyway, and says so at error level."""
    install(node, share)
    node.run("systemd-run", "--unit", "squatter", PRIVATE_PYTHON, "-c",
             "import socket, time; s = socket.socket(); "
             "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
             "s.bind(('127.0.0.1', 9610)); s.listen(); time.sleep(3600)")
    node.wait_active("squatter")
    time.sleep(0.5)  # bound by now (a 3600 s sleep follows the bind)
    configure_and_start(node)
    version_now(node)
    deadline = time.monotonic() + 15
    while not (errors := node.journal("-u", "criproxy", "-p", "err", "-o", "cat")):
        assert time.monotonic() < deadline, node.journal("-u", "criproxy")[-3000:]
        time.sleep(0.2)
    assert "cannot serve metrics on 127.0.0.1:9610" in errors, errors
    assert "front serving" not in errors, errors  # an info line: not under -p err
    assert re.search(r"\bfront\[\d+\]", errors), errors


def test_restart_does_not_restart_kubelet_nor_show_it_a_wrong_list(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    kubelet = start_kubelet_standin(node)
    assert "--container-runtime-endpoint=unix:///run/criproxy.sock" in \
        node.show("kubelet", "Environment")
    before = time.time()
    wait_standin_ok(node, before, 3)
    criproxy_pid = main_pid(node, "criproxy")
    restarted = time.time()
    systemctl(node, "restart", "criproxy")
    version_now(node)
    assert main_pid(node, "criproxy") != criproxy_pid
    wait_standin_ok(node, time.time(), 5)
    assert main_pid(node, "kubelet") == kubelet, unit_status(node, "kubelet")
    assert node.show("kubelet", "NRestarts") == "0"
    entries = standin_entries(node)
    wrong = [e for e in entries if e["ok"] and pod not in e["pods"]]
    assert wrong == [], wrong[:5]
    assert any(e["ok"] for e in entries if e["t"] < restarted)


def test_kubelet_started_alone_starts_criproxy_first_and_finds_its_pods(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    """The drop-in's After= means ready: kubelet, started while criproxy is stopped,
    pulls it in and is started only once criproxy serves every runtime's pods."""
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    systemctl(node, "stop", "criproxy")
    start_kubelet_standin(node)
    assert node.is_active("criproxy") == "active"
    wait_standin_ok(node, 0, 3)
    entries = standin_entries(node)
    assert entries[0]["ok"] and pod in entries[0]["pods"], entries[:3]
    assert [e for e in entries if not e["ok"] or pod not in e["pods"]] == []


def test_killed_criproxy_is_restarted_by_systemd(node: nspawn.Machine, share: Path,
                                                 fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    before = main_pid(node, "criproxy")
    node.run("systemctl", "kill", "-s", "KILL", "criproxy")
    deadline = time.monotonic() + 30
    while main_pid(node, "criproxy") in (before, 0) or node.is_active("criproxy") != "active":
        assert time.monotonic() < deadline, unit_status(node)
        time.sleep(0.1)
    assert int(node.show("criproxy", "NRestarts")) == 1
    wait_serving(node, 10)  # active means ready (Type=notify): it answers at once
    assert pod in listed_pods(node)


def test_upgrade_restarts_on_the_new_version_and_keeps_the_flags(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    pod = run_pod(node, "alt")
    env = node.host_path(ENV_FILE).read_text()
    before = main_pid(node, "criproxy")
    node.run("dpkg", "-i", f"{SHARE}/newer.deb", timeout=300)
    assert re.search(r"\+upgrade1$", node.run("dpkg-query", "-W", "-f", "${Version}",
                                              "criproxy").stdout)
    assert node.is_active("criproxy") == "active"
    assert main_pid(node, "criproxy") != before
    version_now(node)
    assert pod in listed_pods(node)
    assert node.host_path(ENV_FILE).read_text() == env
    # Every process runs the new files: none maps a file dpkg replaced.
    processes = criproxy_processes(node)
    assert len(processes) == 4, processes  # supervisor, front, two workers
    for pid in processes:
        maps = node.run("cat", f"/proc/{pid}/maps").stdout
        assert "(deleted)" not in maps, [l for l in maps.splitlines() if "(deleted)" in l][:3]


def test_remove_stops_criproxy_and_kubelet_still_starts(
        node: nspawn.Machine, share: Path, fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    kubelet = start_kubelet_standin(node)
    assert node.host_path(DROP_IN).exists()
    node.run("dpkg", "-r", "criproxy", timeout=300)
    assert node.is_active("criproxy") in ("inactive", "failed")
    assert criproxy_processes(node) == {}
    assert not node.host_path(DROP_IN).exists()  # remove takes back what install-systemd wrote
    assert main_pid(node, "kubelet") == kubelet  # ... without restarting kubelet
    assert node.show("kubelet", "NeedDaemonReload") == "no"  # remove reloaded systemd
    node.run("systemctl", "restart", "kubelet")
    node.wait_active("kubelet")
    assert "criproxy" not in node.show("kubelet", "Environment")


def test_purge_leaves_nothing(node: nspawn.Machine, share: Path,
                              fakes: dict[str, FakeRuntime]) -> None:
    installed_and_running(node, share)
    wait_serving(node, 30)
    run_pod(node, "alt")  # the runtime dir gets its record files
    node.run("dpkg", "--purge", "criproxy", timeout=300)
    assert node.run("dpkg-query", "-W", "criproxy", check=False).returncode != 0
    assert leftovers_inside(node, share) == []
    for path in ("/usr/lib/criproxy", "/etc/criproxy", "/run/criproxy", LISTEN, DROP_IN,
                 "/etc/systemd/system/kubelet.service.wants/criproxy.service",
                 "/var/lib/systemd/deb-systemd-helper-enabled/criproxy.service.dsh-also"):
        assert not os.path.lexists(node.host_path(path)), path
    assert node.is_active("criproxy") == "inactive"
    assert node.show("criproxy", "LoadState") == "not-found"


# Run by Debian's python3 inside the machine: tests/node/test_deb.py's leftovers() there.
LEFTOVERS = """
import os, subprocess, sys
left = []
for name in sys.stdin.read().split():
    path = "/" + name.lstrip("./")
    if path == "/" or not os.path.lexists(path):
        continue
    if name.endswith("/") and subprocess.run(["dpkg", "-S", os.path.realpath(path)],
                                             capture_output=True).returncode == 0:
        continue
    left.append(path)
print("\\n".join(left))
"""


def leftovers_inside(node: nspawn.Machine, share: Path) -> list[str]:
    """The package's paths still in the machine; a directory counts unless another
    package owns it too."""
    (deb,) = share.glob("criproxy_*.deb")
    listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                             capture_output=True).stdout
    names = subprocess.run(["tar", "-t"], input=listing, check=True,
                           capture_output=True).stdout.decode()
    out = node.run("python3", "-c", LEFTOVERS, input=names).stdout
    return out.split()


def test_the_unit_is_hardened_and_still_serves(node: nspawn.Machine, share: Path,
                                                fakes: dict[str, FakeRuntime]) -> None:
    install(node, share)
    verify = node.run("systemd-analyze", "verify", "/lib/systemd/system/criproxy.service",
                      check=False, timeout=120)
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
    security = node.run("systemd-analyze", "security", "--no-pager", "criproxy.service",
                        check=False, timeout=120).stdout
    exposure = re.search(r"Overall exposure level for criproxy\.service: (\d+\.\d+)", security)
    assert exposure, security[-2000:]
    assert float(exposure[1]) <= MAX_EXPOSURE, security
    configure_and_start(node)
    version_now(node)
    assert run_pod(node, "alt").startswith("alt__")
    metrics = node.run(PRIVATE_PYTHON, "-c", "import urllib.request; print(urllib.request."
                       "urlopen('http://127.0.0.1:9610/metrics', timeout=10).read().decode())")
    for label in ("primary", "alt"):
        assert f'criproxy_runtime_up{{runtime="{label}"}} 1.0' in metrics.stdout, \
            metrics.stdout[-2000:]
