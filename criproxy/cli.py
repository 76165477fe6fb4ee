"""The `criproxy` command.

`criproxy -connect ... -listen ...` starts everything under supervisord;
`criproxy front`, `criproxy status`, `criproxy doctor` and `criproxy
install-systemd` are the subcommands.
"""
from __future__ import annotations

import argparse
import sys

from criproxy import logs
from criproxy.process import proctitle
from criproxy.process.lifeline import die_with_parent
from criproxy.settings import (EXIT_CONFIG_ERROR, ConfigError, config_from_args,
                               load_settings_file, report_boot_failure)


def run(argv: list[str]) -> int:
    from criproxy.process.supervise import run_supervised
    try:
        config = config_from_args(argv)
        return run_supervised(config)
    except ConfigError as err:
        print(f"criproxy: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def front(argv: list[str]) -> int:
    # Here, not at the top: supervisord runs in this module's process and needs
    # neither asyncio (nor the ssl it loads) nor anything of the front's.
    import asyncio

    from criproxy.front.front import Front
    parser = argparse.ArgumentParser(prog="criproxy front")
    parser.add_argument("--settings", required=True, help="resolved settings file")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        config = load_settings_file(args.settings)
    except ConfigError as err:
        return report_boot_failure(args.settings, "criproxy front", err)
    logs.setup("front", config.verbosity)
    proctitle.show_front(config)
    try:
        asyncio.run(Front.serve(config))
    except ConfigError as err:  # e.g. the listen socket cannot be made
        return report_boot_failure(args.settings, "criproxy front", err)
    return 0


def run_doctor(argv: list[str]) -> int:
    from criproxy.ops import doctor  # grpc and the CRI stubs: not for supervisord's process
    return doctor.main(argv)


def print_version(argv: list[str]) -> int:
    from importlib import metadata
    print(f"criproxy {metadata.version('criproxy')}")
    return 0


def run_status(argv: list[str]) -> int:
    from criproxy.ops import status
    return status.main(argv)


def run_install(argv: list[str]) -> int:
    from criproxy.ops import install
    return install.main(argv)


SUBCOMMANDS = {"front": front, "status": run_status, "install-systemd": run_install,
               "doctor": run_doctor, "--version": print_version, "-version": print_version}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    return run(args)
