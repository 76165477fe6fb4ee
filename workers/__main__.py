"""`python -m workers --settings FILE --runtime-index N`: run one runtime's worker.

supervisord starts one per -connect entry; N is the entry's position (0: primary).
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from criproxy import logs
from criproxy.process import proctitle
from criproxy.process.lifeline import die_with_parent
from criproxy.settings import ConfigError, load_settings_file, report_boot_failure
from workers.worker import Worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="criproxy-worker")
    parser.add_argument("--settings", required=True, help="resolved settings file")
    parser.add_argument("--runtime-index", type=int, required=True,
                        help="position of the runtime in -connect (0: primary)")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        config = load_settings_file(args.settings)
        runtime = config.runtime_at(args.runtime_index)
    except ConfigError as err:
        return report_boot_failure(args.settings, "criproxy worker", err)
    logs.setup(f"worker-{runtime.label}", config.verbosity)
    proctitle.show_worker(config, runtime)
    asyncio.run(Worker.serve(config, runtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
