#!/usr/bin/env python3
"""A tiny read-only OCI registry (HTTP, 127.0.0.1 only) serving an OCI image layout.

containerd's CRI PullImage always resolves against a registry, even for an image it
already holds, so real PullImage/RemoveImage tests need one. This serves exactly what
containerd's resolver uses: GET/HEAD /v2/, manifests by tag or digest, blobs by digest.

Repositories come from the layout's index.json: each manifest entry annotated with
"io.containerd.image.name" (e.g. "docker.io/library/busybox:latest") is served under its
path without the host ("library/busybox:latest"; containerd asks docker.io for
"library/X" when told "X"), so any host that containerd mirrors here finds it.

Usage: python scripts/registry.py LAYOUT_DIR [--port 0] [--port-file FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NAME_ANNOTATION = "io.containerd.image.name"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
PATH_RE = re.compile(r"^/v2/(?P<repo>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")


def split_ref(name: str) -> tuple[str, str]:
    """'host/repo/path:tag' -> ('repo/path', 'tag'); the host is dropped on purpose."""
    rest, _, tag = name.rpartition(":")
    if "/" in tag or not rest:  # a port, not a tag
        rest, tag = name, "latest"
    first, _, path = rest.partition("/")
    if path and ("." in first or ":" in first or first == "localhost"):
        rest = path
    return rest, tag


def load_tags(layout: Path) -> dict[tuple[str, str], dict]:
    """(repo, tag) -> index.json descriptor of the manifest."""
    index = json.loads((layout / "index.json").read_text())
    tags: dict[tuple[str, str], dict] = {}
    for desc in index.get("manifests", []):
        name = desc.get("annotations", {}).get(NAME_ANNOTATION)
        if not name:
            continue
        repo, tag = split_ref(name)
        tags[(repo, tag)] = desc
    return tags


def make_handler(layout: Path, tags: dict[tuple[str, str], dict]) -> type:
    blobs = layout / "blobs" / "sha256"
    manifest_types = {d["digest"]: d["mediaType"] for d in tags.values()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
            self.serve(with_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self.serve(with_body=True)

        def serve(self, with_body: bool) -> None:
            path = self.path.split("?", 1)[0]  # mirrors add ?ns=docker.io
            if path in ("/v2", "/v2/"):
                return self.reply(200, b"{}", "application/json", with_body)
            m = PATH_RE.match(path)
            if not m:
                return self.error(404, "NAME_UNKNOWN", with_body)
            repo, kind, ref = m["repo"], m["kind"], m["ref"]
            if kind == "manifests":
                return self.manifest(repo, ref, with_body)
            if not DIGEST_RE.match(ref) or not (blobs / ref[7:]).is_file():
                return self.error(404, "BLOB_UNKNOWN", with_body)
            data = (blobs / ref[7:]).read_bytes()
            self.reply(200, data, "application/octet-stream", with_body, ref)

        def manifest(self, repo: str, ref: str, with_body: bool) -> None:
            if DIGEST_RE.match(ref):
                digest = ref if ref in manifest_types else ""
            else:
                digest = tags.get((repo, ref), {}).get("digest", "")
            if not digest:
                return self.error(404, "MANIFEST_UNKNOWN", with_body)
            data = (blobs / digest[7:]).read_bytes()
            self.reply(200, data, manifest_types[digest], with_body, digest)

        def error(self, status: int, code: str, with_body: bool) -> None:
            body = json.dumps({"errors": [{"code": code, "message": code.lower()}]})
            self.reply(status, body.encode(), "application/json", with_body)

        def reply(self, status: int, data: bytes, ctype: str, with_body: bool,
                  digest: str = "") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if with_body:
                self.wfile.write(data)

    return Handler


def serve(layout: Path, port: int = 0, port_file: Path | None = None) -> None:
    tags = load_tags(layout)
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(layout, tags))
    if port_file:
        # Written only once listening, atomically, so a waiter never reads half a port.
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        os.replace(tmp, port_file)
    server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("layout", type=Path, help="OCI image layout directory")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--port-file", type=Path, help="write the bound port here")
    args = ap.parse_args()
    serve(args.layout, args.port, args.port_file)


if __name__ == "__main__":
    main()
