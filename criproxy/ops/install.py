"""`criproxy install-systemd FLAGS...`: install the systemd unit for these flags.

The flags are validated exactly as `criproxy FLAGS...` would, then written to
/etc/criproxy/criproxy.env — the one place the runtime list lives — beside
the unit and a kubelet drop-in pointing kubelet at the listen socket.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from importlib import resources
from pathlib import Path

from criproxy.settings import EXIT_CONFIG_ERROR, ConfigError, config_from_args

UNIT = "etc/systemd/system/criproxy.service"
PACKAGED_UNIT = "lib/systemd/system/criproxy.service"  # the .deb's, which runs /usr/bin/criproxy
KUBELET_DROP_IN = "etc/systemd/system/kubelet.service.d/20-criproxy.conf"
ENV_FILE = "etc/criproxy/criproxy.env"


def _template(name: str) -> str:
    return resources.files("criproxy").joinpath(name).read_text()


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def install(root: Path, flags: list[str], executable: str) -> list[Path]:
    config = config_from_args(flags)
    unit = _template("criproxy.service").replace("/usr/local/bin/criproxy", executable)
    drop_in = _template("kubelet-criproxy.conf").replace("@LISTEN@", config.listen)
    if not any(f.lstrip("-").split("=")[0] == "runtimesDir" for f in flags):
        # Written out, so that the flags file says where runtimes register.
        flags = [*flags, "-runtimesDir", config.runtimes_dir or "off"]
    env = f"CRIPROXY_FLAGS={shlex.quote(shlex.join(flags))}\n"
    written = [_write(root, KUBELET_DROP_IN, drop_in), _write(root, ENV_FILE, env)]
    if not (root / PACKAGED_UNIT).exists():  # else a copy in /etc would hide its upgrades
        written.insert(0, _write(root, UNIT, unit))
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="criproxy install-systemd",
        description="Install criproxy's systemd unit; other arguments are criproxy's flags.")
    parser.add_argument("--root", default="/", help="install below this directory")
    args, flags = parser.parse_known_args(argv)
    executable = shutil.which("criproxy") or sys.argv[0]
    try:
        written = install(Path(args.root), flags, str(Path(executable).resolve()))
    except ConfigError as err:
        print(f"criproxy install-systemd: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print("wrote " + ", ".join(map(str, written)))
    print("now: systemctl daemon-reload && systemctl enable --now criproxy && "
          "systemctl restart kubelet")
    return 0
