"""`python -m workers --settings FILE (--runtime-index N | --registered NAME)`: run
one runtime's worker.

supervisord starts one per -connect entry (N: the entry's position, 0 the
primary), and the registrar one per runtime registered in -runtimesDir.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from criproxy import logs
from criproxy.process import proctitle
from criproxy.process.lifeline import die_with_parent
from criproxy.settings import (Config, ConfigError, Runtime, load_settings_file,
                               report_boot_failure)
from workers.worker import Worker


class NotRegistered(Exception):
    """A registration that went while its worker started: the registrar removes its
    program. Not a boot failure, which would stop all of criproxy."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    die_with_parent()
    try:
        config = load_settings_file(args.settings)
        runtime = (config.runtime_at(args.runtime_index) if args.registered is None
                   else _registered(config, args.registered))
    except ConfigError as err:
        return report_boot_failure(args.settings, "criproxy worker", err)
    except NotRegistered as err:
        print(f"criproxy worker: {err}", file=sys.stderr)
        return 1
    logs.setup(f"worker-{runtime.label}", config.verbosity)
    proctitle.show_worker(config, runtime)
    asyncio.run(Worker.serve(config, runtime))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="criproxy-worker")
    parser.add_argument("--settings", required=True, help="resolved settings file")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--runtime-index", type=int,
                       help="position of the runtime in -connect (0: primary)")
    which.add_argument("--registered", metavar="NAME", help="a runtime registered in -runtimesDir")
    return parser


def _registered(config: Config, name: str) -> Runtime:
    from criproxy.registrations import published_registrations  # registered runtimes only
    try:
        registration = published_registrations(Path(config.rundir)).get(name)
    except ConfigError as err:
        raise NotRegistered(str(err)) from None
    if registration is None:
        raise NotRegistered(f"runtime {name!r} is not registered in {config.runtimes_dir}")
    return registration.runtime


if __name__ == "__main__":
    sys.exit(main())
