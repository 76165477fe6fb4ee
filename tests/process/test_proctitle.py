"""Process titles (`ps` names each process) and `criproxy --version`."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.process.cluster import Cluster
from tests.support.harness import REPO


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_each_process_says_what_it_is(cluster: Cluster) -> None:
    proxy = cluster.proxy
    listen, rundir = proxy.listen, proxy.rundir
    assert cmdline(proxy.supervisord_pid()) == f"criproxy: supervisor {listen} [{rundir}]"
    assert comm(proxy.supervisord_pid()) == "criproxy"
    assert cmdline(proxy.front_pid()) == f"criproxy: front {listen} [{rundir}]"
    assert comm(proxy.front_pid()) == "criproxy-front"
    for label, fake in cluster.fakes.items():
        pid = proxy.worker_pid(label)
        assert cmdline(pid) == f"criproxy: worker {label} {fake.socket} [{rundir}]"
        assert comm(pid) == "criproxy-worker"


def test_version_prints_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for flag in ("--version", "-version"):
        proc = subprocess.run([sys.executable, "-m", "criproxy", flag], cwd=REPO,
                              capture_output=True, text=True, timeout=30)
        assert (proc.returncode, proc.stdout, proc.stderr) == \
            (0, f"criproxy {version}\n", "")
