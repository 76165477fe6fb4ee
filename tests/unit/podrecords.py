"""A pod record of a test's own, and the runtimes' List answers fed to it
(tests/unit/test_podrecord.py, test_sameitems.py)."""
from __future__ import annotations

import time
from pathlib import Path

from cri_api.v1 import api_pb2 as cri

from criproxy.record.podrecord import PodRecord
from criproxy.settings import config_from_values

UID = "io.kubernetes.pod.uid"


def make_record(tmp_path: Path, stale_for: float = 180.0) -> PodRecord:
    config = config_from_values({"connect": "/p.sock,alt:/a.sock", "rundir": str(tmp_path),
                                 "stale_for": str(stale_for)})
    return PodRecord(config)


def sandbox(sid: str, uid: str, state: int = cri.SANDBOX_READY, **annotations: str) -> cri.PodSandbox:
    return cri.PodSandbox(id=sid, state=state, labels={UID: uid}, annotations=annotations,
                          metadata=cri.PodSandboxMetadata(name=sid, uid=uid, namespace="ns"),
                          created_at=int(time.time_ns()))


def container(cid: str, sid: str, uid: str, state: int = cri.CONTAINER_RUNNING) -> cri.Container:
    return cri.Container(id=cid, pod_sandbox_id=sid, state=state, labels={UID: uid},
                         metadata=cri.ContainerMetadata(name=cid))


def pods_answer(*items: cri.PodSandbox) -> bytes:
    return cri.ListPodSandboxResponse(items=items).SerializeToString()


def containers_answer(*items: cri.Container) -> bytes:
    return cri.ListContainersResponse(containers=items).SerializeToString()


ALL_PODS = cri.ListPodSandboxRequest()
ALL_CONTAINERS = cri.ListContainersRequest(filter=cri.ContainerFilter())


def listed_pods(record: PodRecord, runtime: str = "alt",
                request: cri.ListPodSandboxRequest = ALL_PODS) -> list[str] | None:
    raw = record.last_answer(runtime, "ListPodSandbox", request)
    return None if raw is None else [s.id for s in cri.ListPodSandboxResponse.FromString(raw).items]


def listed_containers(record: PodRecord, request: cri.ListContainersRequest = ALL_CONTAINERS
                      ) -> list[tuple[str, int]] | None:
    raw = record.last_answer("alt", "ListContainers", request)
    if raw is None:
        return None
    return [(c.id, c.state) for c in cri.ListContainersResponse.FromString(raw).containers]


def feed(record: PodRecord, pods: list[cri.PodSandbox], containers: list[cri.Container]) -> None:
    record.answered("alt", "ListPodSandbox", ALL_PODS, pods_answer(*pods), record.sent("alt"))
    record.answered("alt", "ListContainers", ALL_CONTAINERS, containers_answer(*containers),
                    record.sent("alt"))
