"""`criproxy doctor`'s systemd checks: criproxy.service's state and kubelet's drop-in.

A unit can be `active` while nothing serves its socket (its processes failing to
start, forever), and a kubelet drop-in can outlive the unit and the socket it
names (after `dpkg -r`): neither shows in the socket checks alone.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from criproxy.ops.findings import FAIL, OK, WARN, Finding, probe_socket

UNIT = "criproxy.service"
# systemd's unit search path, highest precedence first.
UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system",
             "usr/lib/systemd/system", "lib/systemd/system")
DROP_IN_DIRS = ("etc/systemd/system/kubelet.service.d", "run/systemd/system/kubelet.service.d")
# Dependencies that stop kubelet from starting when the unit is gone; Wants=/After= do not.
HARD_DEPS = ("Requires", "BindsTo", "Requisite")
DEPS = HARD_DEPS + ("Wants", "After", "PartOf")
ENDPOINT_FLAGS = ("container-runtime-endpoint", "image-service-endpoint")
PROPERTIES = "LoadState,ActiveState,SubState,MainPID,NRestarts,Result"
LOGS = "journalctl -u criproxy -e says why"

# Runs `systemctl ARGS...`; its stdout, or None when systemctl is absent or fails.
Systemctl = Callable[[list[str]], "str | None"]


def run_systemctl(command: str = "systemctl") -> Systemctl:
    def run(args: list[str]) -> str | None:
        path = shutil.which(command)
        if path is None:
            return None
        try:
            done = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None
    return run


@dataclasses.dataclass
class UnitState:
    load: str
    active: str
    sub: str
    main_pid: int
    restarts: int
    result: str

    @property
    def explains_listen(self) -> bool:
        """The unit's finding already says why nothing serves (so check_listen need not)."""
        return self.load == "loaded" and self.active != "inactive"


def unit_state(root: Path, systemctl: Systemctl) -> UnitState | None:
    """criproxy.service's state; None without a running systemd to ask."""
    if not (root / "run/systemd/system").is_dir():  # sd_booted(): systemd is PID 1
        return None
    out = systemctl(["show", UNIT, "-p", PROPERTIES])
    if out is None:
        return None
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def number(key: str) -> int:
        return int(props.get(key, "0")) if props.get(key, "0").isdigit() else 0
    return UnitState(props.get("LoadState", ""), props.get("ActiveState", ""),
                     props.get("SubState", ""), number("MainPID"), number("NRestarts"),
                     props.get("Result", ""))


def check_unit(state: UnitState | None, listen: str) -> list[Finding]:
    if state is None:
        return [Finding(OK, f"no systemd to ask about {UNIT}: its state not checked")]
    if state.load != "loaded" or state.active == "inactive":
        return []  # not installed, or stopped: the listen socket's finding says so
    if state.active == "failed":
        return [Finding(FAIL, f"{UNIT} failed ({state.result or state.sub}); systemd does "
                              "not restart it",
                        f"{LOGS}; fix it, then systemctl restart criproxy")]
    if state.sub.startswith("auto-restart"):  # systemd 254+ also has auto-restart-queued
        return [Finding(FAIL, f"{UNIT} is in a restart loop: systemd restarted it "
                              f"{state.restarts} time(s)", LOGS)]
    if state.active != "active":
        return [Finding(WARN, f"{UNIT} is {state.active} ({state.sub})",
                        "run doctor again in a few seconds")]
    return [_check_active(state, listen)]


def _check_active(state: UnitState, listen: str) -> Finding:
    running = f"{UNIT} is active ({state.sub}, main pid {state.main_pid})"
    why = probe_socket(listen)
    if why:
        # The unit's processes may be failing to start, unseen by systemd (issue 19).
        return Finding(FAIL, f"{running} but nothing serves its listen socket: {why}",
                       f"{LOGS}; then systemctl restart criproxy")
    if state.restarts:
        return Finding(WARN, f"{running} and serves {listen}, but systemd restarted it "
                             f"{state.restarts} time(s) since it was started (crashes?)",
                       LOGS)
    return Finding(OK, f"{running} and serves {listen}")


# --- kubelet's drop-in ----------------------------------------------------------------

def unit_file(root: Path) -> Path | None:
    """The criproxy.service file systemd would load, if any."""
    for directory in UNIT_DIRS:
        path = root / directory / UNIT
        if path.exists():  # a mask (a symlink to /dev/null) exists too
            return path
    return None


def drop_ins(root: Path) -> list[Path]:
    """kubelet drop-ins that mention criproxy (ours, or one an operator wrote)."""
    found = []
    for directory in DROP_IN_DIRS:
        for path in sorted((root / directory).glob("*.conf")):
            try:
                if "criproxy" in path.read_text().lower():
                    found.append(path)
            except OSError:
                continue
    return found


def _dependencies(text: str) -> list[str]:
    """The Requires=/Wants=/... directives that name criproxy.service."""
    found = []
    for key, value in re.findall(r"^\s*(\w+)\s*=\s*(.*)$", text, re.M):
        if key in DEPS and UNIT in value.split():
            found.append(key)
    return found


def _endpoint_paths(text: str) -> list[str]:
    """unix socket paths kubelet's endpoint flags in `text` name (other schemes skipped)."""
    flags = "|".join(ENDPOINT_FLAGS)
    values = re.findall(rf"--(?:{flags})[= ]([^\s\"']+)", text)
    paths = [v[len("unix://"):] if v.startswith("unix://") else v for v in values]
    return list(dict.fromkeys(p for p in paths if p.startswith("/")))


def check_drop_ins(root: Path, listen: str) -> list[Finding]:
    found: list[Finding] = []
    for path in drop_ins(root):
        text = path.read_text()
        found += _check_drop_in_unit(path, _dependencies(text), unit_file(root))
        found += [_check_drop_in_socket(path, socket_path, listen)
                  for socket_path in _endpoint_paths(text)]
    return found


def _check_drop_in_unit(path: Path, deps: list[str], unit: Path | None) -> list[Finding]:
    if not deps:
        return []
    named = "/".join(f"{d}=" for d in deps) + f" {UNIT}"
    fix = f"reinstall criproxy, or rm {path} && systemctl daemon-reload"
    if unit is None:
        hard = [d for d in deps if d in HARD_DEPS]
        effect = ("kubelet will not start" if hard
                  else "kubelet starts without it")
        return [Finding(FAIL, f"kubelet drop-in {path} names {named}, which is not "
                              f"installed: {effect}", fix)]
    if unit.is_symlink() and os.readlink(unit) == "/dev/null":
        return [Finding(FAIL, f"kubelet drop-in {path} names {named}, which is masked "
                              f"({unit} -> /dev/null)", f"systemctl unmask criproxy, or {fix}")]
    return [Finding(OK, f"kubelet drop-in {path}: {named} ({unit})")]


def _check_drop_in_socket(path: Path, socket_path: str, listen: str) -> Finding:
    ours = os.path.realpath(socket_path) == os.path.realpath(listen)
    why = probe_socket(socket_path)
    if why:
        fix = ("start criproxy: systemctl start criproxy" if ours
               else f"point it at unix://{listen}, or rm {path} && systemctl daemon-reload")
        return Finding(FAIL, f"kubelet drop-in {path} points kubelet at unix://{socket_path}: "
                             f"{why}", fix)
    if not ours:
        return Finding(WARN, f"kubelet drop-in {path} points kubelet at unix://{socket_path}, "
                             f"not criproxy's listen socket {listen}",
                       f"point it at unix://{listen}")
    return Finding(OK, f"kubelet drop-in {path} points kubelet at unix://{socket_path}, "
                       "which is served")
