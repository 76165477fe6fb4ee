"""The benchmark's fake runtime: tests/fakeruntime.py with its journal turned off.

    python bench/common/fake.py --socket PATH --journal IGNORED --name NAME [fakeruntime flags]

The tests' fake writes a JSON line (and flushes it) for every call it gets, so
that tests can check what reached the runtime. A benchmark has no use for it,
and it would make the fake slower than it needs to be, which flatters the proxy
(the journal's cost is the same for direct and proxied calls, so the ratio of
the two would move towards 1). Everything else is the tests' fake, unchanged.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import fakeruntime  # noqa: E402


class _NoJournal:
    def __init__(self, _path: Any) -> None:
        pass

    def record(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


if __name__ == "__main__":
    fakeruntime.Journal = _NoJournal  # type: ignore[misc, assignment]
    fakeruntime.main()
