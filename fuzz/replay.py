"""Replay inputs through a target without atheris, with the traceback of a failure:

    python -m fuzz.replay TARGET FILE_OR_DIR...
"""
from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

from fuzz.run import quiet_logs


def main(argv: list[str]) -> int:
    quiet_logs()
    target = importlib.import_module(f"fuzz.target_{argv[0]}")
    failed = 0
    for name in argv[1:]:
        path = Path(name)
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            try:
                target.test_one_input(file.read_bytes())
            except Exception:  # noqa: BLE001
                failed += 1
                print(f"{file}: FAILS", file=sys.stderr)
                traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
