"""install-systemd writes the unit, the kubelet drop-in and the one flags file."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from criproxy.settings import config_from_args


def _install(root: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "criproxy", "install-systemd", "--root",
                           str(root), *flags], capture_output=True, text=True, timeout=30)


def test_install_writes_unit_drop_in_and_flags(tmp_path: Path) -> None:
    flags = ["-connect", "/run/containerd/containerd.sock,virtlet.cloud:/run/virtlet.sock",
             "-listen", "/run/cp.sock", "-v", "3"]
    assert _install(tmp_path, *flags).returncode == 0
    unit = (tmp_path / "etc/systemd/system/criproxy.service").read_text()
    assert "Restart=always" in unit and "RestartPreventExitStatus=2" in unit
    assert "WantedBy=kubelet.service" in unit and "Before=kubelet.service" in unit
    drop_in = (tmp_path / "etc/systemd/system/kubelet.service.d/20-criproxy.conf").read_text()
    assert "--container-runtime-endpoint=unix:///run/cp.sock" in drop_in
    env = (tmp_path / "etc/criproxy/criproxy.env").read_text()
    name, _, value = env.strip().partition("=")
    assert name == "CRIPROXY_FLAGS"
    written = shlex.split(shlex.split(value)[0])
    assert config_from_args(written) == config_from_args(flags)
    assert written[-2:] == ["-runtimesDir", "/run/criproxy-runtimes"]  # the flags file names it


def test_install_refuses_bad_flags(tmp_path: Path) -> None:
    proc = _install(tmp_path, "-connect", "/a,/b")
    assert proc.returncode == 2 and "'/b'" in proc.stderr
    assert not (tmp_path / "etc").exists()


def test_install_leaves_the_packaged_unit_alone(tmp_path: Path) -> None:
    """With the .deb's unit in /lib, a copy in /etc would hide the package's upgrades."""
    packaged = tmp_path / "lib/systemd/system/criproxy.service"
    packaged.parent.mkdir(parents=True)
    packaged.write_text("[Service]\nExecStart=/usr/bin/criproxy $CRIPROXY_FLAGS\n")
    assert _install(tmp_path, "-connect", "/run/containerd/containerd.sock").returncode == 0
    assert not (tmp_path / "etc/systemd/system/criproxy.service").exists()
    assert (tmp_path / "etc/systemd/system/kubelet.service.d/20-criproxy.conf").exists()
    assert (tmp_path / "etc/criproxy/criproxy.env").exists()
