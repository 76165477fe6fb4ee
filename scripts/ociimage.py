"""Reproducible OCI images built offline from Debian's static busybox: an OCI layout (served
by scripts/registry.py) and a tar of it (imported with ctr)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
from pathlib import Path

from debpackages import BUSYBOX

PAUSE_IMAGE = "registry.k8s.io/pause:3.9"
BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
REGISTRY_HOST = "registry.criproxy.test"  # made up; containerd mirrors it to our registry
REGISTRY_BUSYBOX = f"{REGISTRY_HOST}/busybox:latest"  # served only, never imported
CREATED = "2024-01-01T00:00:00Z"  # fixed, so the image digests are the same on every run


def add_blob(layout: Path, data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def busybox_layer() -> bytes:
    """An uncompressed, reproducible tar: /bin/busybox, every applet as a symlink, /etc basics."""
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 1704067200, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr", "usr/bin",
                  "usr/sbin", "var"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in sorted(set(applets) - {"bin/busybox"}):
            add(applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def image_config(diff_id: str, process: dict) -> bytes:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
              **process}
    return json.dumps({
        "created": CREATED, "architecture": arch, "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "criproxy scripts/runtimes.py"}],
    }, sort_keys=True).encode()


def build_image(out: Path) -> Path:
    """OCI layout at out/oci (served by the registry) and a tar of it (imported with ctr).

    Three images share the busybox layer: busybox (Cmd sh); the pause image, whose default
    command must block forever because containerd runs the sandbox image as is; and a
    registry-only busybox with its own image ID, so that RemoveImage of it (which drops
    every tag of that ID) leaves the imported images alone.
    """
    layout = out / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layer = busybox_layer()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_desc = add_blob(layout, gzip.compress(layer, mtime=0),
                          "application/vnd.oci.image.layer.v1.tar+gzip")
    images = ((BUSYBOX_IMAGE, {"Cmd": ["sh"]}),
              (PAUSE_IMAGE, {"Entrypoint": ["/bin/sleep", "inf"]}),
              (REGISTRY_BUSYBOX, {"Cmd": ["sh"], "Labels": {"criproxy.test/from": "registry"}}))
    manifests = []
    for name, process in images:
        config = add_blob(layout, image_config(diff_id, process),
                          "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": [layer_desc]}
        desc = add_blob(layout, json.dumps(manifest, sort_keys=True).encode(), manifest["mediaType"])
        desc["annotations"] = {"io.containerd.image.name": name,
                               "org.opencontainers.image.ref.name": name.rpartition(":")[2]}
        manifests.append(desc)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    # The tar's index names only the images to import; the registry one must be pulled.
    imported = [d for d in manifests
                if d["annotations"]["io.containerd.image.name"] != REGISTRY_BUSYBOX]
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": imported}))
    tar_path = out / "images.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(layout / "oci-layout", arcname="oci-layout")
        tar.add(out / "index.json", arcname="index.json")
        tar.add(layout / "blobs", arcname="blobs")
    return tar_path

