"""`criproxy doctor` on -runtimesDir: the directory, and each entry in it.

The same scan as supervisord's registrar (criproxy/registrations.py), so what
doctor says of an entry is what criproxy decides of it. The registered
runtimes it returns are checked by doctor.py like any -connect runtime.
"""
from __future__ import annotations

import os
from pathlib import Path

from criproxy import registrations
from criproxy.ops.findings import FAIL, OK, WARN, Finding
from criproxy.registrations import Registration
from criproxy.settings import Config

# The hardened unit (systemd/criproxy.service) may reach unix sockets under /run only.
REACHABLE = ("/run/",)


def check_registrations(config: Config) -> tuple[list[Finding], list[Registration]]:
    if not config.runtimes_dir:
        return [Finding(OK, "no -runtimesDir: runtimes register only through -connect")], []
    directory = Path(config.runtimes_dir)
    if not directory.exists():
        return [Finding(OK, f"runtimes dir {directory} does not exist yet; criproxy "
                            "creates it, writable by root alone")], []
    found = registrations.scan(directory, *registrations.taken(config))
    if found.problem:
        return [Finding(FAIL, found.problem,
                        f"chown {os.geteuid()} {directory} && chmod go-w {directory}")], []
    findings = [Finding(FAIL, f"{directory / r.entry} is refused: {r.reason}",
                        "rename or remove it") for r in found.refused]
    findings += [_reachable(r) for r in found.registered.values()]
    findings.append(Finding(OK, f"runtimes dir {directory}: {len(found.registered)} "
                                f"registered, {len(found.refused)} refused"))
    return [f for f in findings if f is not None], list(found.registered.values())


def _reachable(registration: Registration) -> Finding | None:
    target = os.path.realpath(registration.socket)
    if target.startswith(REACHABLE):
        return None
    return Finding(WARN, f"runtime {registration.name}: {registration.socket} leads to "
                         f"{target}, outside /run: criproxy's hardened unit cannot reach it",
                   "let the runtime put its socket under /run (or /var/run)")
