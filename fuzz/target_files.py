"""Target 4: the files a front or worker reads at start.

The record file (criproxy/record/recordfile.py) and the settings file
(settings.load_settings_file), raw bytes or built from a real one then
truncated, corrupted, of another version or another socket. Invariants:
- a record file is loaded or discarded, with a log line when something in it
  is discarded, never an exception; the pod record built on it (PodRecord)
  then serves: its views, its last answers, a merged List with the runtime down;
- a settings file gives a Config or a ConfigError, nothing else; a Config
  written back (settings.to_values) loads as the same Config;
- the registrar's published list (registrations.published_registrations, read by
  the front at start) gives registrations or a ConfigError.

Input: mode (record, settings or published file; raw or built), then the
builder's bytes or the file.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
from cri_api.v1 import api_pb2 as v1

from criproxy.front.routing import METHODS
from criproxy import registrations
from criproxy.record import recordfile
from criproxy.record.podrecord import PodRecord
from criproxy.settings import ConfigError, load_settings_file, to_values
from fuzz import builder, harness
from fuzz.provider import Provider

RECORD_RAW, RECORD_BUILT, SETTINGS_RAW, SETTINGS_BUILT, PUBLISHED_RAW, PUBLISHED_BUILT = range(6)
LIST_SANDBOXES = METHODS["/runtime.v1.RuntimeService/ListPodSandbox"]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_lines = _Lines()
logging.getLogger("criproxy").addHandler(_lines)
logging.getLogger("criproxy").setLevel(logging.DEBUG)


def record_file(p: Provider) -> bytes:
    """A record file as recordfile.save writes it, with damage the input chooses."""
    model = harness.Model("alt")
    lists: dict[Any, Any] = {}
    for method in ("ListPodSandbox", "ListContainers", "ListImages", 3):
        if not p.bool():
            continue
        kind = p.int_in(0, 4)
        if kind == 0:
            raw: Any = (v1.ListPodSandboxResponse(items=model.sandboxes.values())
                        if method != "ListContainers" else
                        v1.ListContainersResponse(containers=model.containers.values())
                        ).SerializeToString()
        elif kind == 1:
            raw = builder.encode(p, builder.build(p, v1.ListPodSandboxResponse
                                                  if method == "ListPodSandbox"
                                                  else v1.ListContainersResponse))
        elif kind == 2:
            raw = builder.flip(p, v1.ListPodSandboxResponse(
                items=model.sandboxes.values()).SerializeToString())
        elif kind == 3:
            raw = p.take(p.int_in(0, 40))
        else:
            raw = p.pick(("text", None, 5, [b"x"]))
        taken = p.pick((time.time(), time.time() - 10, time.time() - 1e6, time.time() + 1e6,
                        float("nan"), float("inf"), "1", None, 0))
        lists[method] = [raw, taken] if p.int_in(0, 7) else p.pick(([raw], raw, {}))
    body: Any = {"v": p.pick((1, 1, 1, 2, 0, "1", None)),
                 "socket": p.pick(("/a.sock", "/a.sock", "/other.sock", None)),
                 "lists": lists if p.int_in(0, 7) else p.pick(([], "x", None))}
    if p.chance(8):
        body = p.pick(([body], "text", 1, None))
    encoded = msgpack.packb(body, use_bin_type=True)
    if p.chance(3):
        encoded = builder.flip(p, encoded)
    return encoded


def settings_file(p: Provider) -> bytes:
    values: Any = to_values(harness.config(p.byte()))
    for _ in range(p.int_in(0, 3)):
        key = p.pick(sorted(values) + ["bogus"])
        how = p.int_in(0, 4)
        if how == 0:
            values.pop(key, None)
        elif how == 1:
            values[key] = p.pick((None, 1, 1.5, True, [], {}, "", "nan", "-1", "1e400"))
        elif how == 2:
            values[key] = p.text(40)
        elif how == 3:
            values[key] = str(values.get(key, "")) + p.pick((",", ":", "=", "unix://", "\x00",
                                                             ",alt:/b.sock", "/"))
        else:
            values = p.pick(([values], "text", 3, None, {}))
            break
    encoded = json.dumps(values).encode()
    if p.chance(3):
        encoded = builder.flip(p, encoded)
    return encoded


def published_file(p: Provider) -> bytes:
    """registered.json as the registrar publishes it, then damaged."""
    entry: Any = {"name": p.pick(("alt", "vm.cloud", "", "a__b", 3)),
                  "socket": p.pick(("/run/criproxy-runtimes/alt.sock", None, 1)),
                  "handlers": p.pick(({"kata": "kata"}, {}, {"": "x"}, ["kata"], "kata", None)),
                  "missing_since": p.pick((None, 1.5, "x"))}
    for key in list(entry):
        if p.chance(6):
            del entry[key]
    body: Any = {"directory": "/run/criproxy-runtimes", "problem": "", "time": 1.0,
                 "runtimes": p.pick(([entry], [entry, entry], [], [3], ["x"], [[1]], {}, 5,
                                     None, "abc")),
                 "refused": []}
    if p.chance(6):
        body = p.pick(([body], "text", 1, None))
    encoded = json.dumps(body).encode()
    return builder.flip(p, encoded) if p.chance(3) else encoded


def test_one_input(data: bytes) -> None:
    p = Provider(data)
    mode = p.byte() % 6
    if mode in (RECORD_RAW, RECORD_BUILT):
        check_record_file(p.rest() if mode == RECORD_RAW else record_file(p))
    elif mode in (SETTINGS_RAW, SETTINGS_BUILT):
        check_settings_file(p.rest() if mode == SETTINGS_RAW else settings_file(p))
    else:
        check_published_file(p.rest() if mode == PUBLISHED_RAW else published_file(p))


def check_published_file(content: bytes) -> None:
    """The registrar's registered.json, read by the front at start: registrations
    or a ConfigError."""
    rundir = Path(harness.clean_rundir())
    (rundir / registrations.PUBLISHED).write_bytes(content)
    try:
        found = registrations.published_registrations(rundir)
    except ConfigError:
        return
    for name, registration in found.items():
        well_formed = isinstance(name, str) and isinstance(registration.socket, str) and \
            bool(name) and "__" not in name and name.replace(".", "").replace("-", "") \
            .replace("_", "").isalnum() and name.isascii()
        assert well_formed, f"a published registration criproxy would not accept: {registration}"


def check_record_file(content: bytes) -> None:
    cfg = harness.config(3)  # the primary and alt (/a.sock)
    rundir = harness.clean_rundir()
    path = recordfile.record_path(rundir, "alt")
    path.write_bytes(content)
    del _lines.lines[:]
    loaded = recordfile.load(path, "/a.sock")
    assert isinstance(loaded, dict)
    for method, (raw, taken) in loaded.items():
        assert isinstance(method, str) and isinstance(raw, bytes) and isinstance(taken, float)
    if not loaded and content and not _empty_record(content):
        assert _lines.lines, "a record file discarded without a log line"
    record = PodRecord(cfg)
    for name, runtime_record in record.runtimes.items():
        runtime_record.view()
        runtime_record.lists()
        record.last_answer(name, "ListPodSandbox", v1.ListPodSandboxRequest())
        record.last_answer(name, "ListContainers", v1.ListContainersRequest())
    record.pod_runtime(lambda sandbox: True)
    # A front starting on this file, alt down: the merged List answers.
    dispatcher, links, _ = harness.make_dispatcher(cfg)
    path.write_bytes(content)
    dispatcher.record = PodRecord(cfg)
    links["alt"].up = False
    answer = harness.run(dispatcher.unary(LIST_SANDBOXES, b"", 5.0))
    v1.ListPodSandboxResponse.FromString(answer)


def _empty_record(content: bytes) -> bool:
    """A sound file with no answer in it: nothing discarded, nothing to say."""
    try:
        data = msgpack.unpackb(content, raw=False)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(data, dict) and data.get("v") == 1 and data.get("socket") == "/a.sock" \
        and data.get("lists") == {}


def check_settings_file(content: bytes) -> None:
    path = Path(harness.clean_rundir()) / "settings.json"
    path.write_bytes(content)
    try:
        config = load_settings_file(str(path))
    except ConfigError:
        return
    path.write_text(json.dumps(to_values(config)))
    again = load_settings_file(str(path))
    if not any(isinstance(v, float) and math.isnan(v) for v in vars(config).values()):
        assert again == config, f"{config} written back loads as {again}"


def main() -> None:
    from fuzz.run import fuzz_main
    fuzz_main(sys.modules[__name__])


if __name__ == "__main__":
    main()
