#!/usr/bin/python3
"""Build dist/criproxy_<version>_<arch>.deb with Debian's own tools.

    /usr/bin/python3 packaging/deb/build.py [--out DIR]     (what `make deb` runs)

criproxy and its pinned dependencies (requirements.txt here) go into a private
Python environment, /usr/lib/criproxy, made by Debian's /usr/bin/python3 — the
interpreter the package then Depends on — so that nothing is fetched at install
time and the system Python is left alone (PEP 668). The network (PyPI) is needed
here, at build time only. dpkg-deb builds the package; dpkg-shlibdeps finds the
libraries the dependencies' compiled modules need.
"""
from __future__ import annotations

import argparse
import datetime
import email.utils
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"
PRIVATE = "usr/lib/criproxy"  # the private environment, relative to the package root
ENV_FILE = "etc/criproxy/criproxy.env"
UNIT = "lib/systemd/system/criproxy.service"
KEPT_IN_BIN = ("criproxy",)  # pip's other scripts (pip, supervisorctl...) are not shipped
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
SOURCES = ("pyproject.toml", "README.md", "criproxy", "workers")
TOOLS = {"dpkg-deb": "dpkg", "dpkg-shlibdeps": "dpkg-dev", "strip": "binutils"}
# Imported once before the environment is relocated: a broken wheel fails the build.
SMOKE_TEST = ("import criproxy.cli, criproxy.front.front, workers.worker, grpc, zmq, msgpack, "
              "setproctitle, google._upb._message, supervisor.supervisord")
NOT_SHIPPED = ("include", "lib/python3.*/site-packages/*/tests")  # headers dir, test suites


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, text=True, stdout=subprocess.PIPE)
    if proc.returncode != 0:
        sys.exit(f"build.py: {' '.join(map(str, argv))} failed (exit {proc.returncode})")
    return proc.stdout


def check_tools() -> None:
    """Refuse early, saying what to install, rather than fail half-way."""
    if Path(sys.executable).resolve() != Path(DEBIAN_PYTHON).resolve():
        sys.exit(f"build.py: run me with Debian's {DEBIAN_PYTHON}, not {sys.executable}")
    missing = [pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    try:
        import ensurepip  # noqa: F401  (Debian ships it in python3-venv)
    except ImportError:
        missing.append("python3-venv")
    if missing:
        sys.exit(f"build.py: missing tools; apt-get install {' '.join(sorted(set(missing)))}")


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def python_version() -> str:
    """The interpreter the package needs, e.g. "3.11": its compiled modules are for it."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# ---------------------------------------------------------------- the private environment


def clean_source(dest: Path) -> Path:
    """The project's sources alone: a stale build/ or egg-info in REPO must not leak in."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def make_environment(root: Path, wheels: Path) -> Path:
    """The venv at its final place below `root`, holding criproxy and the pinned deps."""
    venv = root / PRIVATE
    run(DEBIAN_PYTHON, "-m", "venv", venv)
    pip = (venv / "bin" / "python3", "-m", "pip", "--quiet")
    run(*pip, "wheel", "--no-deps", "--wheel-dir", wheels, clean_source(wheels.parent / "src"))
    run(*pip, "install", "--no-compile", "--only-binary", ":all:",
        "--requirement", HERE / "requirements.txt")
    run(*pip, "install", "--no-compile", "--no-deps", *wheels.glob("criproxy-*.whl"))
    run(*pip, "check")  # every dependency criproxy declares is pinned and installed
    run(*pip, "uninstall", "--yes", "pip", "setuptools")  # build tools, not needed to run
    for pattern in NOT_SHIPPED:
        for path in venv.glob(pattern):
            shutil.rmtree(path)
    strip_objects(venv)
    run(venv / "bin" / "python3", "-c", SMOKE_TEST)
    return venv


def strip_objects(venv: Path) -> None:
    """Strip the compiled modules that come with their symbol tables, as dh_strip
    would. Others are left alone: their wheels stripped them already, and patchelf
    rewrote some (bundled libraries), which a second strip can break."""
    for path in venv.rglob("*.so"):
        if b".symtab" in path.read_bytes():
            run("strip", "--strip-unneeded", "--remove-section=.comment",
                "--remove-section=.note", path)


def relocate(venv: Path) -> None:
    """Make the venv built below the package root work from /usr/lib/criproxy."""
    version = python_version()
    bin_dir = venv / "bin"
    for entry in bin_dir.iterdir():
        if entry.name not in KEPT_IN_BIN:
            entry.unlink()
    # Relative links within /usr (Debian policy 10.5), to the exact interpreter.
    (bin_dir / f"python{version}").symlink_to(f"../../../bin/python{version}")
    for alias in ("python3", "python"):
        (bin_dir / alias).symlink_to(f"python{version}")
    script = bin_dir / "criproxy"
    body = script.read_text().split("\n", 1)[1]
    script.write_text(f"#!/{PRIVATE}/bin/python{version}\n{body}")
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\n"
        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")
    for path in list(venv.rglob("__pycache__")):
        shutil.rmtree(path)  # postinst compiles them; dpkg must not own them
    for path in venv.rglob("direct_url.json"):
        path.unlink()  # names the build machine's wheel directory


def refuse_build_paths(root: Path, build_dir: Path) -> None:
    """No file may still name the directory it was built in."""
    needle = str(build_dir).encode()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            sys.exit(f"build.py: {path} names the build directory {build_dir}")


# ---------------------------------------------------------------- the other files


def install_file(root: Path, relative: str, text: str | bytes, mode: int = 0o644) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    path.chmod(mode)


def manual_page(venv: Path, version: str) -> bytes:
    """criproxy(1), written from the settings by the environment's own interpreter."""
    page = run(venv / "bin" / "python3", HERE / "manpage.py", version, release_date().date())
    return gzip.compress(page.encode(), 9, mtime=0)


# Alert rules and the dashboard, for operators to load (README "Alerts and dashboard").
MONITORING = ("prometheus/criproxy-alerts.yaml", "grafana/criproxy.json")


def install_files(root: Path, man: bytes) -> None:
    unit = (REPO / "criproxy" / "criproxy.service").read_text()
    unit = unit.replace("/usr/local/bin/criproxy", "/usr/bin/criproxy")
    unit = unit.replace("\nDescription=", "\nDocumentation=man:criproxy(1)\nDescription=", 1)
    install_file(root, UNIT, unit)
    install_file(root, "usr/share/man/man1/criproxy.1.gz", man)
    install_file(root, ENV_FILE, (HERE / "criproxy.env").read_text())
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/criproxy").symlink_to("../lib/criproxy/bin/criproxy")
    doc = "usr/share/doc/criproxy"
    install_file(root, f"{doc}/copyright", (HERE / "copyright").read_text())
    changelog = (HERE / "changelog").read_bytes()
    install_file(root, f"{doc}/changelog.gz", gzip.compress(changelog, 9, mtime=0))
    install_file(root, "usr/share/lintian/overrides/criproxy",
                 (HERE / "lintian-overrides").read_text())
    for monitoring in MONITORING:
        install_file(root, f"usr/share/criproxy/{monitoring}",
                     (REPO / "deploy" / monitoring).read_text())


def release_date() -> datetime.datetime:
    """The newest changelog entry's date, on its trailer line ` -- NAME <MAIL>  DATE`."""
    trailer = next(line for line in (HERE / "changelog").read_text().splitlines()
                   if line.startswith(" -- "))
    return email.utils.parsedate_to_datetime(trailer.split(">", 1)[1].strip())


def changelog_version() -> str:
    """The newest entry's version: `criproxy (0.1.0) unstable; urgency=medium`."""
    first = (HERE / "changelog").read_text().split("\n", 1)[0]
    return first.split("(", 1)[1].split(")", 1)[0]


# ---------------------------------------------------------------- control data


def library_depends(root: Path, work: Path) -> str:
    """dpkg-shlibdeps on every compiled module: the system libraries they need."""
    objects = [p for p in root.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    # The layout dpkg-shlibdeps expects: debian/control, the package built in
    # debian/criproxy (it finds the bundled libraries there, through their $ORIGIN).
    (root / "DEBIAN").mkdir(exist_ok=True)
    (work / "debian" / "control").write_text(
        "Source: criproxy\n\nPackage: criproxy\nArchitecture: any\n")
    out = run("dpkg-shlibdeps", "-O", *objects, cwd=work)
    return out.strip().partition("shlibs:Depends=")[2]


def installed_size(root: Path) -> int:
    """In KiB, as dpkg counts it (each file rounded up)."""
    sizes = (p.lstat().st_size for p in root.rglob("*")
             if "DEBIAN" not in p.relative_to(root).parts)
    return sum((size + 1023) // 1024 for size in sizes) or 1


def control(root: Path, version: str, arch: str, libs: str) -> str:
    template = (HERE / "control").read_text()
    depends = ", ".join(filter(None, [f"python{python_version()}", libs]))
    return template.format(version=version, arch=arch, depends=depends,
                           size=installed_size(root))


def md5sums(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                   and "DEBIAN" not in p.relative_to(root).parts)
    return "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"
                   for p in files)


def write_control_dir(root: Path, fields: str) -> None:
    install_file(root, "DEBIAN/md5sums", md5sums(root))
    install_file(root, "DEBIAN/control", fields)
    install_file(root, "DEBIAN/conffiles", f"/{ENV_FILE}\n")
    for script in MAINTAINER_SCRIPTS:
        install_file(root, f"DEBIAN/{script}", (HERE / script).read_text(), 0o755)


def normalize_modes(root: Path) -> None:
    """0755 for directories and the one program, 0644 for the rest, modules and
    compiled modules included (some wheels mark them executable)."""
    program = root / PRIVATE / "bin" / "criproxy"
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path == program else 0o644)


# ---------------------------------------------------------------- main


def build(out: Path, work: Path) -> Path:
    version, arch = project_version(), run("dpkg", "--print-architecture").strip()
    if changelog_version() != version:
        sys.exit(f"build.py: packaging/deb/changelog's newest entry is "
                 f"{changelog_version()}, pyproject.toml says {version}")
    shutil.rmtree(work, ignore_errors=True)
    root = work / "debian" / "criproxy"
    venv = make_environment(root, work / "wheels")
    man = manual_page(venv, version)
    relocate(venv)
    install_files(root, man)
    refuse_build_paths(root, work)
    normalize_modes(root)
    write_control_dir(root, control(root, version, arch, library_depends(root, work)))
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"criproxy_{version}_{arch}.deb"
    # xz at level 3: a package 10% bigger than at dpkg's default 6, built 3 times faster.
    run("dpkg-deb", "--root-owner-group", "-Zxz", "-z3", "--build", root, deb)
    return deb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "deb",
                        help="scratch directory (emptied first)")
    args = parser.parse_args()
    check_tools()
    os.umask(0o022)
    os.environ["SOURCE_DATE_EPOCH"] = str(int(release_date().timestamp()))  # file dates
    print(build(args.out.resolve(), args.work.resolve()))


if __name__ == "__main__":
    main()
