"""The shipped Prometheus rules and Grafana dashboard (issue 16), proven with
Debian's promtool and a real Prometheus scraping a running criproxy.

deploy/prometheus/criproxy-alerts.yaml holds the recording rules and alerts,
deploy/prometheus/criproxy-alerts.test.yaml their promtool unit tests, and
deploy/grafana/criproxy.json the dashboard. The fixture installs the
prometheus package with apt-get when it is missing (as CI, root, needs).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.process.cluster import ALT_URL_BASE, Cluster, start_cluster, stop_cluster
from tests.process.promserver import (Prometheus, ensure_prometheus, metric_names,
                                      start_prometheus)
from tests.support.fakeruntime import start_fake
from tests.support.harness import REPO, short_dir
from tests.support.observing import metrics_address, scrape, wait_until

RULES = REPO / "deploy" / "prometheus" / "criproxy-alerts.yaml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "criproxy-alerts.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "criproxy.json"
RUNTIME_DOWN = "CriproxyRuntimeDown"
# Long enough to see the alert pending, short enough for a quick test.
TEST_FOR = "6s"
# Prometheus' own series for a scrape job: not criproxy's to export.
SCRAPE_SERIES = {"up"}
# Polls of Prometheus: generous, the machine is shared.
WAIT = 60.0


@pytest.fixture(scope="module")
def promtool() -> str:
    ensure_prometheus()
    return str(shutil.which("promtool"))


def alert_names(rules_text: str) -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", rules_text, flags=re.M)


def with_for(rules_text: str, alert: str, duration: str) -> str:
    """The rules with `alert`'s `for:` changed to `duration`."""
    changed, count = re.subn(rf"(- alert: {alert}\n(?:(?!\s*- ).*\n)*?\s+for: )\S+",
                             rf"\g<1>{duration}", rules_text)
    assert count == 1, f"no for: of {alert} in the rules"
    return changed


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


# --- promtool ---------------------------------------------------------------------


def test_rules_pass_promtool_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES), cwd=RULES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_quiet_during_a_worker_restart() -> None:
    alerts = alert_names(RULES.read_text())
    assert RUNTIME_DOWN in alerts and len(alerts) >= 5
    tests = RULE_TESTS.read_text()
    restart = tests.split("- name: a normal worker restart fires nothing")[1].split("- name:")[0]
    for alert in alerts:
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels:", tests), \
            f"no unit test sees {alert} fire"
        if alert != "CriproxyNotScraped":  # its input is no criproxy at all
            assert f"alertname: {alert}, exp_alerts: []" in restart, \
                f"no unit test checks {alert} stays quiet during a worker restart"


def test_the_unit_tests_catch_a_runtime_down_alert_too_quick_for_a_worker_restart(
        promtool: str, tmp_path: Path) -> None:
    """The quiet-during-a-restart tests can fail: with `for: 15s`, they do."""
    (tmp_path / RULES.name).write_text(with_for(RULES.read_text(), RUNTIME_DOWN, "15s"))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "a normal worker restart fires nothing" in result.stdout + result.stderr


# --- a real Prometheus scraping criproxy ----------------------------------------------


@pytest.fixture
def watched(promtool: str) -> Iterator[tuple[Cluster, Prometheus]]:
    """Three fake runtimes behind criproxy, scraped by Prometheus with the shipped
    rules, except a short `for:` of the runtime-down alert."""
    cluster = start_cluster()
    workdir = short_dir("cpprom-")
    prometheus = None
    try:
        rules = workdir / RULES.name
        rules.write_text(with_for(RULES.read_text(), RUNTIME_DOWN, TEST_FOR))
        prometheus = start_prometheus(workdir, [metrics_address(cluster.proxy)], rules)
        yield cluster, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_cluster(cluster)
        shutil.rmtree(workdir, ignore_errors=True)


def make_traffic(cluster: Cluster) -> None:
    """Calls to each runtime, answered and failed, and List calls to all."""
    runtime = cluster.proxy.runtime_stub()
    for _ in range(5):
        runtime.Version(cri.VersionRequest(), timeout=10)
        runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10)
    for label in ("alt", "vm.cloud"):
        with pytest.raises(grpc.RpcError):
            runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=f"{label}__gone"),
                                    timeout=10)


def runtime_up(prometheus: Prometheus, label: str) -> float | None:
    return prometheus.value(f'criproxy_runtime_up{{job="criproxy", runtime="{label}"}}')


def firing_down_alert(prometheus: Prometheus, seen: list[str]) -> dict | None:
    """alt's runtime-down alert once firing; records the states seen until then."""
    alerts = prometheus.alerts(RUNTIME_DOWN)
    assert all(alert["labels"]["runtime"] == "alt" for alert in alerts), alerts
    state = alerts[0]["state"] if alerts else ""
    if state and (not seen or seen[-1] != state):
        seen.append(state)
    return alerts[0] if state == "firing" else None


def test_prometheus_sees_a_runtime_go_down_alerts_and_resolves(watched) -> None:
    cluster, prometheus = watched
    wait_until(lambda: runtime_up(prometheus, "alt") == 1, WAIT, "Prometheus to scrape alt up")
    assert runtime_up(prometheus, "primary") == 1
    make_traffic(cluster)

    cluster.fakes["alt"].stop()
    wait_until(lambda: runtime_up(prometheus, "alt") == 0, WAIT, "criproxy_runtime_up{alt} 0")
    assert runtime_up(prometheus, "primary") == 1 and runtime_up(prometheus, "vm.cloud") == 1
    states: list[str] = []
    alert = wait_until(lambda: firing_down_alert(prometheus, states), WAIT,
                       f"{RUNTIME_DOWN} to fire (states so far: {states})")
    assert states[0] == "pending", f"never seen pending: {states}"
    assert alert["labels"]["severity"] == "critical"
    for hint in ("criproxy status", "criproxy doctor", "journalctl -u criproxy"):
        assert hint in alert["annotations"]["description"]
    assert "Runtime alt behind criproxy on 127.0.0.1:" in alert["annotations"]["summary"]

    cluster.fakes["alt"] = start_fake(cluster.base, "alt", "--url-base", ALT_URL_BASE)
    wait_until(lambda: runtime_up(prometheus, "alt") == 1, WAIT, "criproxy_runtime_up{alt} back")
    wait_until(lambda: not prometheus.alerts(RUNTIME_DOWN), WAIT, f"{RUNTIME_DOWN} to resolve")

    # The scrape alerts' selector finds the job, named as in the README.
    rules = {rule["name"]: rule for group in prometheus.api("rules")["groups"]
             for rule in group["rules"]}
    assert prometheus.query(rules["CriproxyNotScraped"]["query"]) == []
    assert 'up{job="criproxy"}' in rules["CriproxyScrapeFailing"]["query"]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    queries += [variable["query"]["query"] for variable in dashboard["templating"]["list"]
                if variable["type"] == "query"]
    return queries


def test_dashboard_panels_are_laid_out_and_ask_the_chosen_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert grid["x"] + grid["w"] <= 24 and not cells & taken, f"{panel['title']} overlaps"
        taken |= cells
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance", "runtime"}


def as_prometheus_query(dashboard_query: str) -> str:
    """A dashboard query as Grafana sends it: every runtime of every node."""
    return (dashboard_query.replace("$__rate_interval", "1m")
            .replace("$instance", ".*").replace("$runtime", ".*"))


def test_rules_and_dashboard_use_only_series_criproxy_exports(watched) -> None:
    cluster, prometheus = watched
    wait_until(lambda: runtime_up(prometheus, "alt") == 1, WAIT, "Prometheus to scrape alt up")
    make_traffic(cluster)
    cluster.fakes["alt"].stop()  # so that a List call is answered without it
    wait_until(lambda: runtime_up(prometheus, "alt") == 0, WAIT, "criproxy_runtime_up{alt} 0")
    with pytest.raises(grpc.RpcError):
        cluster.proxy.runtime_stub().ContainerStatus(
            cri.ContainerStatusRequest(container_id="alt__x"), timeout=10)  # UNAVAILABLE
    cluster.proxy.runtime_stub().ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10)
    exported = {name for name, _ in scrape(cluster.proxy)}

    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert len(rules) == len(alert_names(RULES.read_text())) + \
        len(re.findall(r"^\s*- record: ", RULES.read_text(), flags=re.M))
    assert all(rule["health"] == "ok" for rule in rules), rules
    recorded = {rule["name"] for rule in rules if rule["type"] == "recording"}
    rule_names = set().union(*(metric_names(rule["query"]) for rule in rules))
    dashboard_names = set().union(*(metric_names(query) for query in dashboard_queries()))
    assert {"criproxy_runtime_up", "criproxy_requests_total",
            "criproxy_fanout_skipped_total"} <= rule_names
    assert {"criproxy_worker_pending_calls", "criproxy_event_subscribers",
            "criproxy_front_process_cpu_seconds_total",
            "runtime:criproxy_request_duration_seconds:p99_rate5m"} <= dashboard_names
    assert rule_names - exported - recorded == SCRAPE_SERIES
    assert dashboard_names - exported - recorded == set(), "not on criproxy's /metrics"

    # Each dashboard query runs, and finds data, on Prometheus scraping criproxy.
    for query in dashboard_queries():
        if query.startswith("label_values("):
            continue  # Grafana's, not PromQL; its metric is checked above
        wait_until(lambda: prometheus.query(as_prometheus_query(query)), WAIT,
             f"data for the dashboard's {query}")
