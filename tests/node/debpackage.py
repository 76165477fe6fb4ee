"""The Debian package as the node tests need it: its version, the tools its build and
tests use (installed with apt when missing), a newer build of it for upgrades, and
the machine-wide lock that lets one test run at a time install it
(tests/node/test_deb.py, test_deb_scripts.py, nspawn.py)."""
from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Iterator

from tests.support.harness import REPO, runtimes_script

DEBIAN_PYTHON = Path("/usr/bin/python3")
# Tools the tests (and the build) use -> the Debian package that has them.
TOOLS = {"dpkg-shlibdeps": "dpkg-dev", "strip": "binutils", "lintian": "lintian",
         "systemd-analyze": "systemd", "man": "man-db", "make": "make"}
TEST_LOCK = Path("/run/lock/criproxy-test-deb.lock")  # one user of dpkg -i criproxy at a time
LOCK_TIMEOUT = 900.0


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def debian_python_version() -> str:
    return subprocess.run([DEBIAN_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def ensure_tools() -> None:
    """apt-get install what the build and these tests need (CI starts bare)."""
    missing = {pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)}
    if subprocess.run([DEBIAN_PYTHON, "-c", "import ensurepip"],
                      capture_output=True).returncode != 0:
        missing.add(f"python{debian_python_version()}-venv")
    if missing:
        runtimes_script().apt_install(missing, lock_timeout=LOCK_TIMEOUT)


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an fcntl lock on `path`, waiting (bounded) while someone else holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} still locked after {timeout}s")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def upgrade_of(deb: Path, out: Path) -> Path:
    """The same package as a newer version, for an upgrade."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version()}+upgrade1",
                              control.read_text(), flags=re.M))
    newer = out / "newer.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(tree), str(newer)],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return newer
