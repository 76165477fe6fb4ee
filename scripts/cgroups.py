"""Empty cgroups left behind by containers killed behind their runtime's back."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

def cgroup_mounts() -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [ln.split()[4] for ln in lines if ln.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")]


def remove_cgroups(d: Path) -> None:
    """Containers killed behind containerd's back leave empty cgroups (/k8s.io/<id> in every
    hierarchy). Their paths are in the bundles; rmdir removes only empty ones."""
    for cfg in d.glob("state/io.containerd.runtime.v2.task/*/*/config.json"):
        try:
            path = json.loads(cfg.read_text()).get("linux", {}).get("cgroupsPath", "")
        except (OSError, ValueError):
            continue
        if not path.startswith("/"):  # not a cgroupfs path (e.g. systemd slice:prefix:name)
            continue
        for mount in cgroup_mounts():
            with contextlib.suppress(OSError):
                os.rmdir(mount + path)


def remove_cgroup_tree(root: str) -> None:
    """rmdir the (by now empty) pod cgroup parents under `root` (a kubelet-like
    cgroup_parent prefix), in every hierarchy: runc and crun remove a container's own
    cgroup, never the parent made for it."""
    for mount in cgroup_mounts():
        top = Path(mount + root)
        if not top.is_dir():
            continue
        dirs = [p for p in top.rglob("*") if p.is_dir()] + [top]
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()

