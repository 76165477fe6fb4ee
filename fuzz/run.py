"""`make fuzz`: every target under atheris, FUZZ_SECONDS each, and a table.

    python -m fuzz.run [--seconds N] [TARGET...]     run targets, print the table
    python -m fuzz.run --child TARGET LIBFUZZER_ARGS   one target under atheris
    python -m fuzz.run --child TARGET fuzz/corpus/TARGET build/fuzz/TARGET/corpus -merge=1
                                                     keep what adds coverage in the tree

Each target starts from its seed corpus (fuzz/corpus/<target>/) and its kept
crash inputs (fuzz/crashes/<target>/); what it finds new goes to
build/fuzz/<target>/corpus/, a crash input to build/fuzz/<target>/ (move it to
fuzz/crashes/<target>/ with its fix); FUZZ_WORK names another place than build/fuzz. Per target the table shows inputs run,
inputs/s, coverage (libFuzzer's `cov:` edges and `ft:` features, criproxy's
modules instrumented) and when it last grew (about: inputs so far over the rate
so far), corpus size, crashes. Exits non-zero on a crash. A target
with a `custom_mutator` (fuzz/mutator.py: protobuf-aware) gets it.

"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("requests", "answers", "wire", "files", "flags")
FUZZ = ROOT / "fuzz"
WORK = Path(os.environ.get("FUZZ_WORK", ROOT / "build" / "fuzz"))  # new inputs, crashes, logs
# The code under test: instrumented for coverage (fuzz/ itself is not).
INSTRUMENTED = ["criproxy", "workers"]


def quiet_logs() -> None:
    """criproxy's warnings for bad input would be most of the output: keep them
    from stderr, but let handlers a target adds see them."""
    logging.lastResort = None
    logging.getLogger().addHandler(logging.NullHandler())


def fuzz_main(module: ModuleType) -> None:
    """Run `module.test_one_input` under atheris (python -m fuzz.target_X ARGS;
    coverage then covers only modules imported after this point)."""
    import atheris
    quiet_logs()
    mutator = getattr(module, "custom_mutator", None)
    if mutator is not None:
        atheris.Setup(sys.argv, module.test_one_input, custom_mutator=mutator)
    else:
        atheris.Setup(sys.argv, module.test_one_input)
    atheris.Fuzz()


def child(target: str, args: list[str]) -> None:
    import atheris
    quiet_logs()
    with atheris.instrument_imports(include=INSTRUMENTED):
        module: ModuleType = importlib.import_module(f"fuzz.target_{target}")
    mutator = getattr(module, "custom_mutator", None)
    argv = [_self_command(target), *args]  # libFuzzer runs it again for -merge, -fork
    if mutator is not None:
        atheris.Setup(argv, module.test_one_input, custom_mutator=mutator)
    else:
        atheris.Setup(argv, module.test_one_input)
    atheris.Fuzz()


def _self_command(target: str) -> str:
    """An executable that is this child again (libFuzzer's -merge=1 reruns argv[0])."""
    path = WORK / target / "child.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\ncd {ROOT} && PYTHONPATH={ROOT} exec {sys.executable} "
                    f"-m fuzz.run --child {target} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/.*?exec/s: (\d+)")
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")


def run_target(target: str, seconds: int, jobs_env: dict[str, str]) -> dict[str, object]:
    work = WORK / target
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    seeds, crashes = FUZZ / "corpus" / target, FUZZ / "crashes" / target
    dirs = [str(corpus)] + [str(d) for d in (seeds, crashes) if d.is_dir()]
    log_path = work / "fuzz.log"
    command = [sys.executable, "-m", "fuzz.run", "--child", target, *dirs,
               f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=4096",
               "-print_final_stats=1", f"-artifact_prefix={work}/"]
    started = time.monotonic()
    with open(log_path, "w") as out:
        rc = subprocess.call(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                             env=jobs_env)
    elapsed = time.monotonic() - started
    result: dict[str, object] = {"target": target, "rc": rc, "seconds": elapsed, "runs": 0,
                                 "cov": 0, "ft": 0, "corpus": 0, "crashes": [], "log": log_path,
                                 "cov_at": 0.0}
    for line in log_path.read_text(errors="replace").splitlines():
        status = _STATUS.match(line)
        if status:
            runs, cov, rate = int(status[1]), int(status[3]), int(status[6])
            if cov > result["cov"]:  # type: ignore[operator]
                # When coverage last grew: inputs so far over the average rate so far.
                result["cov_at"] = runs / rate if rate else 0.0
            result.update(runs=runs, cov=cov, ft=int(status[4]), corpus=int(status[5]))
        done = _DONE.match(line)
        if done:
            result["runs"] = int(done[1])
        if line.startswith("stat::number_of_executed_units:"):
            result["runs"] = int(line.split()[-1])
        if "Test unit written to " in line:
            result["crashes"].append(line.split("Test unit written to ", 1)[1].strip())  # type: ignore[union-attr]
    if rc != 0 and not result["crashes"]:
        result["crashes"].append(f"exit code {rc}, see {log_path}")  # type: ignore[union-attr]
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m fuzz.run")
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)))
    parser.add_argument("targets", nargs="*", default=list(TARGETS))
    options = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for target in options.targets:
        print(f"fuzzing {target} for {options.seconds}s ...", flush=True)
        results.append(run_target(target, options.seconds, env))
    print()
    print(f"{'target':10} {'seconds':>8} {'inputs run':>11} {'inputs/s':>9} {'cov':>6} "
          f"{'ft':>7} {'cov grew last at':>17} {'corpus':>7} {'crashes':>8}")
    for r in results:
        rate = r["runs"] / r["seconds"] if r["seconds"] else 0  # type: ignore[operator]
        print(f"{r['target']:10} {r['seconds']:8.0f} {r['runs']:11} {rate:9.0f} {r['cov']:6} "
              f"{r['ft']:7} {r['cov_at']:16.0f}s {r['corpus']:7} "
              f"{len(r['crashes']):8}")  # type: ignore[arg-type]
    failed = [r for r in results if r["crashes"]]
    for r in failed:
        for crash in r["crashes"]:  # type: ignore[union-attr]
            print(f"{r['target']}: crash: {crash} (log: {r['log']})")
    if failed:
        print("replay one: .venv/bin/python -m fuzz.replay TARGET FILE", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
