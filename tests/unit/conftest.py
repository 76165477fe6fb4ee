"""The unit layer: criproxy's code called in this process, with no process started
and no socket opened (tests/unit/layerguard.py refuses both). What needs a process
or a socket belongs to tests/process/."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.unit.layerguard import GUARD

MOVE_IT = "a unit test may start no process and open no socket: move it to tests/process/"


@pytest.fixture(autouse=True)
def no_process_no_socket() -> Iterator[None]:
    with GUARD.around_test() as left:
        yield
    if left:
        pytest.fail(f"{MOVE_IT} (it {'; '.join(left)})", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """A refusal the test caught itself still fails it."""
    report = yield
    if call.when == "call" and report.passed and GUARD.violations:
        report.outcome = "failed"
        report.longrepr = f"{MOVE_IT} (it {'; '.join(GUARD.violations)})"
    return report
