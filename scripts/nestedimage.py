"""An image holding a second containerd, built offline from Debian's packages.

    python scripts/nestedimage.py OUT      # writes OUT/nested-images.tar, prints its path

The image is what deploy/runtime-daemonset/ runs: Debian's `containerd`,
`containerd-shim-runc-v2`, `ctr` and `runc`, the shared libraries `ldd` names for them,
busybox (the layer of ociimage.py) and the scripts of deploy/runtime-daemonset/image/ (the
entrypoint; the shim wrapper that starts each shim outside the runtime's container). Two
tags share the layers: `NESTED_IMAGES[0]` (":1") and `NESTED_IMAGES[1]` (":2", another
label, so another image id and digest: an upgrade to it recreates the container). Import
the tar into a containerd with containerd_instance.import_images (native snapshotter,
namespace k8s.io).
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from ociimage import CREATED, add_blob, busybox_layer

NESTED_REPO = "docker.io/criproxy/nested-containerd"
NESTED_IMAGES = (f"{NESTED_REPO}:1", f"{NESTED_REPO}:2")
BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc")
# Where a binary goes when not in /usr/bin: the runc shim's place is its wrapper's.
BINARY_PATHS = {"containerd-shim-runc-v2": "usr/libexec/nested-runtime/containerd-shim-runc-v2"}
# The image's own scripts (deploy/runtime-daemonset/image/, each says why) and their paths.
SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "runtime-daemonset" / "image"
SCRIPTS = {"nested-containerd-entrypoint": "usr/local/bin/nested-containerd-entrypoint",
           "nested-containerd-run": "usr/local/bin/nested-containerd-run",
           "nested-shim-cgroup": "usr/local/bin/nested-shim-cgroup",
           "containerd-shim-runc-v2": "usr/bin/containerd-shim-runc-v2"}
# What the entrypoint names its copy of the image's files on the node after: a digest of
# this layer's files, so images of the same content (":1" and ":2") share one copy.
VERSION_FILE = "etc/nested-runtime-version"
ENTRYPOINT = "/usr/local/bin/nested-containerd-entrypoint"
MTIME = 1704067200
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"  # uncompressed: ~100 MB gzips slowly


def shared_libraries(binary: Path) -> list[str]:
    """The paths `ldd` names for `binary` (the loader included; not the vDSO)."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True,
                         text=True).stdout
    paths = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            paths.append(m[1])
    return paths


def content_digest(files: dict[str, tuple[bytes, int]]) -> str:
    """16 hex digits of sha256 over every path, mode and content."""
    digest = hashlib.sha256()
    for path, (data, mode) in sorted(files.items()):
        digest.update(f"{path}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def runtime_layer() -> bytes:
    """An uncompressed, reproducible tar: the four binaries (in /usr/bin but the runc shim),
    their libraries at the paths ldd names, the image's scripts (the runc shim's wrapper in
    its place), its version, and the directories a containerd config uses."""
    files: dict[str, tuple[bytes, int]] = {}
    for name in BINARIES:
        found = shutil.which(name)
        if not found:
            raise RuntimeError(f"{name} is not installed (Debian packages containerd, runc)")
        files[BINARY_PATHS.get(name, f"usr/bin/{name}")] = (Path(found).read_bytes(), 0o755)
        for lib in shared_libraries(Path(found)):
            files[lib.lstrip("/")] = (Path(lib).resolve().read_bytes(), 0o755)
    for name, path in SCRIPTS.items():
        files[path] = ((SCRIPTS_DIR / name).read_bytes(), 0o755)
    files[VERSION_FILE] = (content_digest(files).encode() + b"\n", 0o644)
    dirs = {"etc/containerd", "run", "var/lib", "opt"}
    for path in files:
        parts = path.split("/")[:-1]
        dirs |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.size = mode, MTIME, len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_blob(diff_ids: list[str], labels: dict[str, str]) -> bytes:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return json.dumps({
        "created": CREATED, "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Entrypoint": [ENTRYPOINT], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "criproxy scripts/nestedimage.py"}] * 2,
    }, sort_keys=True).encode()


def build_nested_images(out: Path) -> Path:
    """OCI layout in out/nested-oci and its tar out/nested-images.tar (both tags)."""
    layout = out / "nested-oci"
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layers = [busybox_layer(), runtime_layer()]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    descs = [add_blob(layout, layer, LAYER_TYPE) for layer in layers]
    manifests = []
    for name in NESTED_IMAGES:
        labels = {"org.opencontainers.image.version": name.rpartition(":")[2],
                  "org.opencontainers.image.title": "nested containerd (Debian's packages)"}
        config = add_blob(layout, config_blob(diff_ids, labels),
                          "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config, "layers": descs}
        desc = add_blob(layout, json.dumps(manifest, sort_keys=True).encode(),
                        manifest["mediaType"])
        desc["annotations"] = {"io.containerd.image.name": name,
                               "org.opencontainers.image.ref.name": name.rpartition(":")[2]}
        manifests.append(desc)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    tar_path = out / "nested-images.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / name, arcname=name)
    shutil.rmtree(layout)  # the tar holds it all; ~100 MB less on disk
    return tar_path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT")
    Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
    print(build_nested_images(Path(sys.argv[1])))
