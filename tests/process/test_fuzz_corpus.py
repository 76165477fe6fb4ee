"""The fuzz targets' stored inputs, replayed once (issue 25): every seed of
fuzz/corpus/<target>/ and every crash input kept in fuzz/crashes/<target>/ goes
through the target's test_one_input, in plain Python (no atheris), so a bug the
fuzzer found once fails CI if it comes back. fuzz/pending/ (inputs failing until
a fix in another change lands) is not replayed."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from fuzz.run import TARGETS
from tests.support.harness import REPO

FUZZ = REPO / "fuzz"
INPUTS = sorted((target, path) for target in TARGETS for kind in ("corpus", "crashes")
                for path in (FUZZ / kind / target).glob("*") if path.is_file())


def test_every_target_has_seeds_and_replays_without_atheris() -> None:
    for target in TARGETS:
        assert any((FUZZ / "corpus" / target).iterdir()), f"no seed for {target}"
        module = importlib.import_module(f"fuzz.target_{target}")
        assert "atheris" not in vars(module)
        module.test_one_input(b"")  # the empty input is a complete one too


@pytest.mark.parametrize("target, path", INPUTS,
                         ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in INPUTS])
def test_stored_input(target: str, path: Path) -> None:
    importlib.import_module(f"fuzz.target_{target}").test_one_input(path.read_bytes())
