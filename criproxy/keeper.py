"""supervisord event listener that keeps every program alive, or stops all.

- PROCESS_STATE_FATAL: supervisord gave up starting a program and never
  retries it by itself; retry it after a fixed delay, forever. Meanwhile the
  front reports that runtime as down.
- PROCESS_STATE_EXITED with expected=1: the program exited with the boot
  failure code (bad configuration); restarting cannot help, so record why and
  shut supervisord down.

stdout is supervisord's event protocol channel; logs go to stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from supervisor import childutils

from criproxy.supervise import BOOT_FAILURE_FILE


def _log(text: str) -> None:
    print(f"criproxy keeper: {text}", file=sys.stderr, flush=True)


def _restart_later(name: str, delay: float) -> None:
    def restart() -> None:
        try:
            childutils.getRPCInterface(os.environ).supervisor.startProcess(name, False)
            _log(f"restarted {name}")
        except Exception as err:  # xmlrpc faults and socket errors alike
            _log(f"cannot restart {name}: {err}")
    timer = threading.Timer(delay, restart)
    timer.daemon = True
    timer.start()


def _stop_everything(rundir: Path, name: str) -> None:
    reason = (f"{name} exited with a boot failure (configuration error); "
              "stopping criproxy instead of restarting it — see its log above")
    _log(reason)
    (rundir / BOOT_FAILURE_FILE).write_text(reason + "\n")
    childutils.getRPCInterface(os.environ).supervisor.shutdown()


def handle(event: str, fields: dict[str, str], rundir: Path, retry_after: float) -> None:
    name = f"{fields['groupname']}:{fields['processname']}"
    if event == "PROCESS_STATE_FATAL":
        _log(f"{name} is FATAL; retrying it in {retry_after:g}s")
        _restart_later(name, retry_after)
    elif event == "PROCESS_STATE_EXITED" and fields.get("expected") == "1":
        _stop_everything(rundir, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="criproxy-keeper")
    parser.add_argument("--rundir", required=True)
    parser.add_argument("--retry-after", type=float, required=True)
    args = parser.parse_args(argv)
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        fields = childutils.get_headers(payload.split("\n", 1)[0])
        handle(headers["eventname"], fields, Path(args.rundir), args.retry_after)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
