"""A stand-in for kubelet in tests under a real systemd: it relists as kubelet's PLEG does.

    python3 kubelet_standin.py --log FILE [--interval S] [KUBELET FLAGS...]

It takes the CRI endpoint from kubelet's own flag, `--container-runtime-endpoint`
(criproxy's drop-in puts it in $KUBELET_EXTRA_ARGS), keeps one gRPC channel as
kubelet does (it redials by itself, with backoff), and calls ListPodSandbox every
`--interval` seconds. Each call appends one JSON line to FILE:
{"t": unix time, "ok": true, "pods": [ids]} or {"t": ..., "ok": false, "code": "UNAVAILABLE"}.
Run by a python with grpc and cri_api (a copy of the criproxy package's environment).
"""
from __future__ import annotations

import argparse
import json
import time

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--container-runtime-endpoint", required=True)
    args, _ = parser.parse_known_args()  # kubelet's other flags mean nothing here
    return args


def relist(stub: api_pb2_grpc.RuntimeServiceStub) -> dict:
    """One ListPodSandbox, as a log entry."""
    entry: dict = {"t": time.time()}
    try:
        answer = stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=2)
        entry.update(ok=True, pods=sorted(pod.id for pod in answer.items))
    except grpc.RpcError as err:
        entry.update(ok=False, code=err.code().name)
    return entry


def main() -> None:
    args = parse_args()
    channel = grpc.insecure_channel(args.container_runtime_endpoint)
    stub = api_pb2_grpc.RuntimeServiceStub(channel)
    with open(args.log, "a", buffering=1) as log:
        while True:
            log.write(json.dumps(relist(stub)) + "\n")
            time.sleep(args.interval)


if __name__ == "__main__":
    main()
