"""Unit tests: the routing table covers CRI v1 exactly as ROUTING.md says."""
from __future__ import annotations

from cri_api.v1 import api_pb2 as cri
from cri_api.v1alpha2 import api_pb2 as cri_v1alpha2

from criproxy.front.rewrite import plan_for
from criproxy.front.routing import (CHANGE, LIST, METHODS, STATUS, Digest, Rule, field_value,
                                    target_runtime_annotation)


def _service_methods(api) -> set[str]:
    paths = set()
    for service in api.DESCRIPTOR.services_by_name.values():
        paths |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return paths


def test_every_cri_method_of_both_versions_has_a_route() -> None:
    assert set(METHODS) == _service_methods(cri) | _service_methods(cri_v1alpha2)


def test_v1alpha2_calls_are_the_v1_methods() -> None:
    for path, method in METHODS.items():
        assert method.path == path.replace("v1alpha2", "v1")
        assert method.in_v1alpha2 == (path.replace("v1.", "v1alpha2.") in METHODS)


def _messages(api) -> dict:
    found = {}

    def walk(message, prefix: str) -> None:
        found[prefix + message.name] = message
        for nested in message.nested_types:
            walk(nested, prefix + message.name + ".")
    for message in api.DESCRIPTOR.message_types_by_name.values():
        walk(message, "")
    return found


def test_v1alpha2_messages_are_a_wire_compatible_subset_of_v1() -> None:
    """What lets the proxy pass v1alpha2 bytes for v1 ones (and back) unchanged."""
    new, old = _messages(cri), _messages(cri_v1alpha2)
    assert set(old) <= set(new)
    for name, message in old.items():
        for field in message.fields:
            twin = new[name].fields_by_number[field.number]
            assert (twin.name, twin.type, twin.is_repeated) == (
                field.name, field.type, field.is_repeated), f"{name}.{field.name}"


def test_rules_of_rows_of_the_contract() -> None:
    rule = {m.name: m.route.rule for m in METHODS.values()}
    assert {n for n, r in rule.items() if r == Rule.PRIMARY} == {"Version", "RuntimeConfig"}
    assert rule["Status"] == Rule.STATUS
    assert rule["UpdateRuntimeConfig"] == Rule.BROADCAST
    assert rule["RunPodSandbox"] == Rule.BY_ANNOTATION
    assert rule["GetContainerEvents"] == Rule.STREAM_MERGE
    assert {n for n, r in rule.items() if r == Rule.FAN_OUT} == {
        "ListPodSandbox", "ListContainers", "ListContainerStats", "ListPodSandboxStats",
        "ListImages", "ImageFsInfo", "ListPodSandboxMetrics", "ListMetricDescriptors"}
    assert {n for n, r in rule.items() if r == Rule.BY_IMAGE} == {
        "ImageStatus", "PullImage", "RemoveImage"}


def test_enums_agree_between_versions() -> None:
    for name, enum in cri_v1alpha2.DESCRIPTOR.enum_types_by_name.items():
        twin = cri.DESCRIPTOR.enum_types_by_name[name]
        assert {v.number: v.name for v in enum.values}.items() <= {
            v.number: v.name for v in twin.values}.items()


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
