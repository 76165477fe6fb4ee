"""The benchmark's fake runtime: tests/support/fakeruntime.py with its journal turned off.

    python bench/common/fake.py --socket PATH --journal IGNORED --name NAME
        [--lists-in-any-order] [fakeruntime flags]

The tests' fake writes a JSON line (and flushes it) for every call it gets, so
that tests can check what reached the runtime. A benchmark has no use for it,
and it would make the fake slower than it needs to be, which flatters the proxy
(the journal's cost is the same for direct and proxied calls, so the ratio of
the two would move towards 1). Everything else is the tests' fake, unchanged.

--lists-in-any-order: ListPodSandbox and ListContainers answer their items in
another order each time, as containerd does (it lists from Go maps); each
item's bytes stay the same.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import fakeruntime  # noqa: E402


class _NoJournal:
    def __init__(self, _path: Any) -> None:
        pass

    def record(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _in_any_order(list_method: Any, field: str) -> Any:
    def answer(self: Any, request: Any) -> Any:
        response = list_method(self, request)
        items = list(getattr(response, field))
        random.shuffle(items)
        return type(response)(**{field: items})
    return answer


def _lists_in_any_order() -> None:
    state = fakeruntime.RuntimeState
    state.ListPodSandbox = _in_any_order(state.ListPodSandbox, "items")  # type: ignore[method-assign]
    state.ListContainers = _in_any_order(state.ListContainers,  # type: ignore[method-assign]
                                         "containers")


if __name__ == "__main__":
    fakeruntime.Journal = _NoJournal  # type: ignore[misc, assignment]
    if "--lists-in-any-order" in sys.argv:
        sys.argv.remove("--lists-in-any-order")
        _lists_in_any_order()
    fakeruntime.main()
