"""Knobs of the fake runtime that tests turn while it runs, and its state on disk.

- A state file (`--state`) keeps the fake's sandboxes and containers across its
  restarts, as a real runtime keeps them on disk: a restarted runtime still has
  its pods, so a test can tell "the runtime restarted" from "its pods are gone".
- A control file (`--control`), JSON `{"delays": {"ListPodSandbox": 3.0},
  "failures": {"Version": ["UNKNOWN", "not ready"]}, "garbage": {"ListImages": HEX},
  "lies": {"ListPodSandbox": HEX}}`, read on every call: slow a method down, make
  it fail, make it answer these bytes instead of its answer (a misbehaving
  runtime) or add these bytes to its answer (a lying one), and undo that,
  without a restart.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as cri


def save_state(path: Path, sandboxes: dict[str, Any], containers: dict[str, Any]) -> None:
    body = pickle.dumps({
        "sandboxes": {k: v.SerializeToString() for k, v in sandboxes.items()},
        "containers": {k: (c.pod_sandbox_id, c.status.SerializeToString())
                       for k, c in containers.items()}})
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(body)
    os.replace(temporary, path)


def load_state(path: Path, make_container: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved sandboxes and containers; `make_container(sandbox_id, status)`."""
    if not path.exists():
        return {}, {}
    data = pickle.loads(path.read_bytes())
    sandboxes = {k: cri.PodSandboxStatus.FromString(v) for k, v in data["sandboxes"].items()}
    containers = {k: make_container(sid, cri.ContainerStatus.FromString(v))
                  for k, (sid, v) in data["containers"].items()}
    return sandboxes, containers


class Control:
    """Delays and failures set by the test through the control file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[float, dict[str, Any]] = (0.0, {})

    def _knobs(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._seen[0]:
            self._seen = (mtime, json.loads(self.path.read_text() or "{}"))
        return self._seen[1]

    def delay(self, method: str) -> float:
        return float(self._knobs().get("delays", {}).get(method, 0.0))

    def failure(self, method: str) -> tuple[grpc.StatusCode, str] | None:
        """(code, message) the method fails with now, if the test says so."""
        failure = self._knobs().get("failures", {}).get(method)
        return None if failure is None else (grpc.StatusCode[failure[0]], failure[1])

    def lie(self, method: str) -> bytes:
        """Bytes appended to the method's true answer now (protobuf reads them as more
        items of its lists, or merged into its object): a runtime that lies."""
        return bytes.fromhex(self._knobs().get("lies", {}).get(method, ""))

    def garbage(self, method: str) -> bytes | None:
        """The bytes the method answers now instead of its answer, if the test says so."""
        answer = self._knobs().get("garbage", {}).get(method)
        return None if answer is None else bytes.fromhex(answer)


def set_delays(path: Path, delays: dict[str, float],
               failures: dict[str, tuple[str, str]] | None = None,
               garbage: dict[str, bytes] | None = None,
               lies: dict[str, bytes] | None = None) -> None:
    """Test side: change a running fake's delays, failures (method -> (CODE, message))
    and garbage answers (method -> bytes)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({
        "delays": delays, "failures": failures or {},
        "garbage": {method: raw.hex() for method, raw in (garbage or {}).items()},
        "lies": {method: raw.hex() for method, raw in (lies or {}).items()}}))
    os.replace(temporary, path)
