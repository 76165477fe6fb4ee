"""Observability's parts, in-process (the real proxy's metrics, health, logs, status
and doctor: tests/process/test_observability.py): the metrics address setting, the
metrics kept and forgotten, the p99, the status table, doctor's reading of kubelet's
flags and config."""
from __future__ import annotations

import grpc
import pytest

from criproxy.ops import metrics
from criproxy.ops.doctor import config_value, flag_value
from criproxy.ops.exposition import text_format
from criproxy.ops.status import format_status
from criproxy.settings import ConfigError, config_from_args


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9610", "127.0.0.1:9610"), ("127.0.0.1:0", "127.0.0.1:0"),
    ("[::1]:9610", "[::1]:9610"), ("unix:/run/m.sock", "unix:/run/m.sock"),
    ("unix:///run/m.sock", "unix:/run/m.sock"), ("off", ""), ("", "")])
def test_metrics_address_forms(value: str, expected: str) -> None:
    assert config_from_args(["-connect", "/a", "-metricsAddress", value]).metrics_address == \
        expected


@pytest.mark.parametrize("value", ["9610", "host:port", "host:70000", "unix:rel.sock", ":80"])
def test_bad_metrics_addresses_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="-metricsAddress"):
        config_from_args(["-connect", "/a", "-metricsAddress", value])


def test_p99_interpolates_inside_its_bucket() -> None:
    buckets = [0] * (len(metrics.BUCKETS) + 1)
    assert metrics._quantile(0.99, buckets) is None
    buckets[metrics.BUCKETS.index(0.01)] = 100  # 100 calls in (5 ms, 10 ms]
    assert 0.0099 < metrics._quantile(0.99, buckets) <= 0.01
    buckets[-1] = 50  # beyond the last bound
    assert metrics._quantile(0.99, buckets) == metrics.BUCKETS[-1]


def test_foreign_claims_are_counted_by_runtime_and_method() -> None:
    metrics.declare_runtime("unit.a", ["ListContainers", "ListPodSandbox"], [])
    metrics.foreign_claim_dropped("unit.a", "ListContainers", 2)
    metrics.foreign_claim_dropped("unit.a", "ListContainers")
    text = text_format(metrics.collect()).decode()
    assert "# TYPE criproxy_runtime_foreign_claims_total counter" in text
    name = "criproxy_runtime_foreign_claims_total"
    assert f'{name}{{method="ListContainers",runtime="unit.a"}} 3.0' in text
    assert f'{name}{{method="ListPodSandbox",runtime="unit.a"}} 0.0' in text  # declared
    metrics.forget_runtime("unit.a")


def _answered(method: str, routed: list[str]) -> None:
    metrics.request_started()
    metrics.request_done(method, routed, grpc.StatusCode.OK, 0.01)


def test_a_forgotten_runtime_has_no_series_and_late_counts_make_none() -> None:
    metrics.declare_runtime("unit.b", ["ListContainers"], ["ListContainers"])
    _answered("Version", ["unit.b"])
    _answered("ListContainers", ["unit.b", "unit.c"])  # counted under '*'
    metrics.runtime_skipped("unit.b", "ListContainers")
    assert metrics.recent_rates(now=1000.0)["unit.b"]["rate"] == 0.0
    metrics.forget_runtime("unit.b")
    _answered("Version", ["unit.b"])  # answered as it left
    metrics.last_answer_served("unit.b", "ListContainers")
    metrics.foreign_claim_dropped("unit.b", "ListContainers")
    text = text_format(metrics.collect()).decode()
    assert 'runtime="unit.b"' not in text
    assert 'criproxy_requests_total{code="OK",method="ListContainers",runtime="*"}' in text
    assert "unit.b" not in metrics.recent_rates(now=1001.0)

    metrics.declare_runtime("unit.b", ["ListContainers"], [])  # joins again: from 0
    _answered("Version", ["unit.b"])
    text = text_format(metrics.collect()).decode()
    assert 'criproxy_fanout_skipped_total{method="ListContainers",runtime="unit.b"} 0.0' in text
    assert 'criproxy_requests_total{code="OK",method="Version",runtime="unit.b"} 1.0' in text
    assert metrics.recent_rates(now=1002.0)["unit.b"]["rate"] == 1 / 2
    metrics.forget_runtime("unit.b")


def test_status_shows_no_request_row_for_a_runtime_not_in_its_runtimes() -> None:
    row = {"label": "primary", "state": "up", "worker_pid": 7, "restarts": 0,
           "cri_version": "v1", "socket": "/run/p.sock", "last_error": None}
    rates = {"rate": 2.0, "error_rate": 0.0, "p99": 0.01, "window": 60.0}
    status = {"front_pid": 1, "listen": "/run/c.sock", "time": 100.0, "runtimes": [row],
              "requests": {"primary": rates, "left.one": rates, "*": rates}}
    text = format_status(status, 100.0)
    assert "left.one" not in text
    assert "primary " in text.split("REQUESTS")[1] and "* (several)" in text


def test_kubelet_flag_and_config_parsing() -> None:
    args = ["kubelet", "--config=/etc/k.yaml", "--container-runtime-endpoint",
            "unix:///run/a.sock", "-v=2"]
    assert flag_value(args, "container-runtime-endpoint") == "unix:///run/a.sock"
    assert flag_value(args, "config") == "/etc/k.yaml"
    assert flag_value(args, "image-service-endpoint") is None
    text = "apiVersion: x\ncontainerRuntimeEndpoint: 'unix:///run/c.sock'  # ours\n"
    assert config_value(text, "containerRuntimeEndpoint") == "unix:///run/c.sock"
    assert config_value(text, "imageServiceEndpoint") is None
