"""Unit tests: the routing table covers CRI v1 exactly as ROUTING.md says."""
from __future__ import annotations

from cri_api.v1 import api_pb2 as cri

from criproxy.routing import (CHANGE, LIST, METHODS, STATUS, Digest, Rule, field_value,
                              target_runtime_annotation)
from criproxy.rewrite import plan_for


def _service_methods() -> set[str]:
    paths = set()
    for service in cri.DESCRIPTOR.services_by_name.values():
        paths |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return paths


def test_every_cri_v1_method_has_a_route() -> None:
    assert set(METHODS) == _service_methods()


def test_rules_of_rows_of_the_contract() -> None:
    rule = {path.rsplit("/", 1)[1]: m.route.rule for path, m in METHODS.items()}
    assert {n for n, r in rule.items() if r == Rule.PRIMARY} == {"Version", "Status", "RuntimeConfig"}
    assert rule["UpdateRuntimeConfig"] == Rule.BROADCAST
    assert rule["RunPodSandbox"] == Rule.BY_ANNOTATION
    assert rule["GetContainerEvents"] == Rule.STREAM_MERGE
    assert {n for n, r in rule.items() if r == Rule.FAN_OUT} == {
        "ListPodSandbox", "ListContainers", "ListContainerStats", "ListPodSandboxStats",
        "ListImages", "ImageFsInfo", "ListPodSandboxMetrics", "ListMetricDescriptors"}
    assert {n for n, r in rule.items() if r == Rule.BY_IMAGE} == {
        "ImageStatus", "PullImage", "RemoveImage"}


def test_every_routing_key_exists_on_its_request() -> None:
    for method in METHODS.values():
        if method.route.key:
            field_value(method.request(), method.route.key)  # raises if the path is wrong


def test_only_exec_attach_portforward_rewrite_urls() -> None:
    assert {m.name for m in METHODS.values() if m.route.stream_url} == {
        "Exec", "Attach", "PortForward"}


def test_log_levels_follow_the_original() -> None:
    assert METHODS["/runtime.v1.RuntimeService/ListContainers"].route.log_level == LIST
    assert METHODS["/runtime.v1.RuntimeService/ContainerStatus"].route.log_level == STATUS
    assert METHODS["/runtime.v1.RuntimeService/RunPodSandbox"].route.log_level == CHANGE


def test_digest_policies() -> None:
    assert METHODS["/runtime.v1.ImageService/ImageStatus"].route.digest == Digest.FIRST_FOUND
    assert METHODS["/runtime.v1.ImageService/RemoveImage"].route.digest == Digest.EVERY


def test_annotation() -> None:
    request = cri.RunPodSandboxRequest(config=cri.PodSandboxConfig(
        annotations={"kubernetes.io/target-runtime": "virtlet.cloud"}))
    assert target_runtime_annotation(request) == "virtlet.cloud"
    assert target_runtime_annotation(cri.RunPodSandboxRequest()) == ""


def test_rewrite_plans_skip_messages_without_ids() -> None:
    assert plan_for(cri.VersionResponse.DESCRIPTOR) == ()
    assert ("containers", "message", True) in plan_for(cri.ListContainersResponse.DESCRIPTOR)
