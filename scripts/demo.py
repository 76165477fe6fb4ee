#!/usr/bin/env python3
"""criproxy, shown working: one CRI socket in front of two real containerd runtimes.

    sudo .venv/bin/python scripts/demo.py        # what `make demo` runs

It starts containerd A (runc, the primary) and containerd B (crun, named `crun.test`) with
scripts/runtimes.py, runs `criproxy` in front of them, and then acts as kubelet would, over
the proxy's socket only: a pod on each runtime (B's chosen by the pod annotation
kubernetes.io/target-runtime), a busybox container in each, ExecSync, a container log, the
merged lists. Each step is checked on the runtimes' own sockets, behind the proxy's back.
Then it removes everything and shuts down. Exit status 0 only if every step did what it
should; whatever happens, what it started is stopped.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

import runtimes  # scripts/runtimes.py, beside this file

REPO = Path(__file__).resolve().parent.parent
NAME = "crun.test"                        # B's runtime name: its prefix in ids and images
TARGET_RUNTIME = "kubernetes.io/target-runtime"
STREAM_URL = "http://127.0.0.1:11250"
TIMEOUT = 30                              # seconds, for every CRI call
APT_LOCK_WAIT = 900.0                     # seconds: another apt/dpkg run may hold the lock


class DemoFailed(Exception):
    """A step did not do what it should."""


def check(ok: object, problem: str) -> None:
    if not ok:
        raise DemoFailed(problem)


def short(object_id: str) -> str:
    """`crun.test__5f3a...` -> `crun.test__5f3a1c2d9e0b…` (ids are 64 hex digits)."""
    prefix, sep, rest = object_id.rpartition("__")
    return f"{prefix}{sep}{rest[:12]}…"


def say(line: str = "") -> None:
    print(line, flush=True)


class Criproxy:
    """`criproxy` run as an operator would run it, in a private directory."""

    def __init__(self, workdir: Path, connect: str) -> None:
        self.listen = workdir / "criproxy.sock"
        self.rundir = workdir / "run"
        self.log = workdir / "criproxy.log"
        command = [sys.executable, "-m", "criproxy", "-connect", connect,
                   "-listen", str(self.listen), "-rundir", str(self.rundir),
                   "-streamUrl", STREAM_URL, "-v", "2", "-logtostderr",
                   "-metricsAddress", "127.0.0.1:0"]  # any free port: 9610 may be taken
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        return json.loads((self.rundir / "status.json").read_text())

    def log_tail(self, lines: int = 20) -> str:
        return runtimes.tail(self.log, lines)

    def wait_up(self, labels: list[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        states: dict = {}
        while True:
            try:
                states = {r["label"]: r["state"] for r in self.status()["runtimes"]}
            except (OSError, ValueError, KeyError):
                pass
            if self.listen.exists() and all(states.get(label) == "up" for label in labels):
                return
            if self.proc.poll() is not None:
                raise DemoFailed(f"criproxy exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"criproxy runtimes not up after {timeout:.0f}s ({states}):\n"
                                 f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; if it hangs, SIGKILL the processes it reported, and it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                return self.proc.returncode
            except subprocess.TimeoutExpired:
                pass
            pids = [self.proc.pid]
            try:
                status = self.status()
                pids += [status["front_pid"]]
                pids += [r["worker_pid"] for r in status["runtimes"] if r["worker_pid"]]
            except (OSError, ValueError, KeyError):
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(5)
            return None  # it did not stop by itself
        return self.proc.returncode


class Runtime:
    """One containerd, as the demo shows it; `cri` talks to its own socket directly."""

    def __init__(self, label: str, name: str, inst: dict) -> None:
        self.label, self.name, self.inst = label, name, inst
        self.channel = grpc.insecure_channel(inst["endpoint"])
        self.cri = rpc.RuntimeServiceStub(self.channel)

    def shown(self, bare: str) -> str:
        return f"{self.name}__{bare}" if self.name else bare

    def bare(self, shown: str) -> str:
        prefix = f"{self.name}__" if self.name else ""
        check(shown.startswith(prefix) and (self.name or "__" not in shown),
              f"id {shown!r} should {'start with ' + prefix if prefix else 'have no prefix'}")
        return shown[len(prefix):]

    def holds_pod(self, bare: str) -> bool:
        return bare in {p.id for p in self.cri.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                              timeout=TIMEOUT).items}

    def holds_container(self, bare: str) -> bool:
        return bare in {c.id for c in self.cri.ListContainers(pb.ListContainersRequest(),
                                                              timeout=TIMEOUT).containers}

    def oci_runtime(self, bare: str) -> str:
        """The OCI runtime binary containerd runs this container with (verbose status)."""
        info = self.cri.ContainerStatus(pb.ContainerStatusRequest(container_id=bare,
                                                                  verbose=True),
                                        timeout=TIMEOUT).info
        options = json.loads(info.get("info", "{}")).get("runtimeOptions") or {}
        return Path(options.get("binary_name", "?")).name


class Demo:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.proxy: Criproxy | None = None
        self.runtimes: list[Runtime] = []
        self.pods: list[str] = []            # proxy ids, for the cleanup
        self.channel: grpc.Channel | None = None

    # --- setup and teardown ---------------------------------------------------

    def start(self) -> None:
        say("criproxy demo: one CRI socket in front of two containerd runtimes\n")
        started = time.monotonic()
        # On a fresh VM apt may be busy (unattended-upgrades at first boot): wait for its
        # lock, at most APT_LOCK_WAIT, saying so, rather than fail.
        runtimes.ensure_packages(lock_timeout=APT_LOCK_WAIT)
        info = runtimes.up(self.base / "rt")
        a, b = info["instances"]["a"], info["instances"]["b"]
        self.info = info
        self.a = Runtime("containerd A/runc", "", a)
        self.b = Runtime("containerd B/crun", NAME, b)
        self.runtimes = [self.a, self.b]
        say(f"  containerd A  {a['version']:<24} runc  {a['socket']}")
        say(f"  containerd B  {b['version']:<24} crun  {b['socket']}")
        self.proxy = Criproxy(self.base, f"{a['socket']},{NAME}:{b['socket']}")
        self.proxy.wait_up(["primary", NAME])
        say(f"  criproxy      -connect A,{NAME}:B  listening on {self.proxy.listen}")
        say(f"                (A is the primary: no prefix; B's objects show as {NAME}__<id> "
            f"and {NAME}/<image>)  [up in {time.monotonic() - started:.1f}s]")
        status = subprocess.run([sys.executable, "-m", "criproxy", "status", "-rundir",
                                 str(self.proxy.rundir)], cwd=REPO, capture_output=True,
                                text=True)
        for line in status.stdout.splitlines():
            say(f"    | {line}")
        check(status.returncode == 0, f"`criproxy status` says not all is up:\n{status.stdout}")
        self.channel = grpc.insecure_channel(f"unix://{self.proxy.listen}")
        self.cri = rpc.RuntimeServiceStub(self.channel)
        self.images = rpc.ImageServiceStub(self.channel)
        say()

    def cleanup(self) -> list[str]:
        """Stop what was started, in reverse; returns what went wrong on the way."""
        problems = []
        for pod in reversed(self.pods):
            try:
                self.cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod),
                                        timeout=TIMEOUT)
                self.cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                          timeout=TIMEOUT)
            except grpc.RpcError as err:
                problems.append(f"removing pod {short(pod)}: {err.code().name}: {err.details()}")
        self.pods.clear()
        if self.channel is not None:
            self.channel.close()
        for runtime in self.runtimes:
            runtime.channel.close()
        if self.proxy is not None:
            code = self.proxy.stop()
            if code != 0:
                problems.append(f"criproxy did not exit cleanly on SIGTERM (exit {code}):\n"
                                f"{self.proxy.log_tail()}")
            else:
                say("  criproxy exited 0")
        try:
            runtimes.down(self.base / "rt")
            say("  containerd A and B stopped")
        except Exception as err:  # report it; the demo still ends
            problems.append(f"stopping the runtimes: {err}")
        return problems

    # --- the scenario ---------------------------------------------------------

    def run_pod(self, runtime: Runtime, name: str) -> tuple[str, pb.PodSandboxConfig]:
        uid = uuid.uuid4().hex
        logdir = self.base / "logs" / name
        logdir.mkdir(parents=True)
        annotations = {TARGET_RUNTIME: runtime.name} if runtime.name else {}
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="demo"),
            log_directory=str(logdir), annotations=annotations,
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE))))
        pod = self.cri.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                     timeout=TIMEOUT).pod_sandbox_id
        self.pods.append(pod)
        bare = runtime.bare(pod)
        other = self.b if runtime is self.a else self.a
        check(runtime.holds_pod(bare), f"{runtime.label} does not hold pod {short(bare)}")
        check(not other.holds_pod(bare), f"{other.label} holds pod {short(bare)} too")
        how = f"annotation {runtime.name}" if runtime.name else "no annotation"
        say(f"RunPodSandbox {name} ({how})".ljust(46) + f"-> {short(pod)}")
        say(" " * 46 + f"   [{runtime.label} holds {short(bare)}; {other.label[:12]} does not]")
        return pod, config

    def run_container(self, runtime: Runtime, pod: str, config: pb.PodSandboxConfig,
                      text: str) -> str:
        image = (f"{runtime.name}/" if runtime.name else "") + self.info["images"]["busybox"]
        cid = self.cri.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=config, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=image),
                command=["sh", "-c", f"echo {text}; exec sleep 1000"], log_path="main.log")),
            timeout=TIMEOUT).container_id
        bare = runtime.bare(cid)
        self.cri.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        status = self.cri.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                          timeout=TIMEOUT).status
        check(status.state == pb.CONTAINER_RUNNING,
              f"container {short(cid)} is {pb.ContainerState.Name(status.state)}, not running")
        check(runtime.holds_container(bare), f"{runtime.label} does not hold {short(bare)}")
        oci = runtime.oci_runtime(bare)
        check(runtime.inst["oci_runtime"] in oci,
              f"{runtime.label} runs {short(bare)} with {oci}, not {runtime.inst['oci_runtime']}")
        say(f"CreateContainer+Start, image {image}")
        say(" " * 46 + f"-> {short(cid)} RUNNING   [{runtime.label} runs it with {oci}]")
        return cid

    def exec_sync(self, runtime: Runtime, cid: str, pod_name: str) -> None:
        command = ["sh", "-c", f"echo hello from {pod_name}, PID 1 here is $(cat /proc/1/comm)"]
        out = self.cri.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=command, timeout=10),
                                timeout=TIMEOUT)
        text = out.stdout.decode().strip()
        check(out.exit_code == 0 and text == f"hello from {pod_name}, PID 1 here is sleep",
              f"ExecSync in {short(cid)}: exit {out.exit_code}, {out.stdout!r} {out.stderr!r}")
        say(f"ExecSync {short(cid)}".ljust(46) + f"-> exit 0: {text!r}")

    def read_log(self, cid: str, config: pb.PodSandboxConfig, text: str) -> None:
        status = self.cri.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                          timeout=TIMEOUT).status
        path = Path(config.log_directory) / "main.log"
        check(status.log_path == str(path), f"log path {status.log_path!r}, want {path}")
        deadline = time.monotonic() + 10
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if any(line.endswith(f" stdout F {text}") for line in lines):
                break
            check(time.monotonic() < deadline, f"{path} lacks {text!r} after 10s: {lines}")
            time.sleep(0.1)
        say(f"container log of {short(cid)}: {path}")
        for line in lines:
            say(f"    | {line}")

    def show_lists(self, expect_pods: set[str], expect_containers: set[str]) -> None:
        pods = self.cri.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT).items
        say("ListPodSandbox (merged from both runtimes):")
        for p in pods:
            say(f"    {short(p.id):<28} {p.metadata.name:<8} "
                f"{pb.PodSandboxState.Name(p.state)}")
        check({p.id for p in pods} == expect_pods,
              f"ListPodSandbox shows {[short(p.id) for p in pods]}")
        containers = self.cri.ListContainers(pb.ListContainersRequest(),
                                             timeout=TIMEOUT).containers
        say("ListContainers:")
        for c in containers:
            say(f"    {short(c.id):<28} in pod {short(c.pod_sandbox_id):<28} "
                f"{pb.ContainerState.Name(c.state)}")
        check({c.id for c in containers} == expect_containers,
              f"ListContainers shows {[short(c.id) for c in containers]}")
        images = self.images.ListImages(pb.ListImagesRequest(), timeout=TIMEOUT).images
        say("ListImages:")
        tags = []
        for image in images:
            tags += image.repo_tags
            say(f"    {', '.join(image.repo_tags):<48} {image.id[:19]}…")
        busybox = self.info["images"]["busybox"]
        check(busybox in tags and f"{NAME}/{busybox}" in tags,
              f"ListImages lacks {busybox} or {NAME}/{busybox}: {tags}")

    def remove(self, runtime: Runtime, pod: str, cid: str) -> None:
        self.cri.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0),
                               timeout=TIMEOUT)
        self.cri.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=TIMEOUT)
        check(not runtime.holds_container(runtime.bare(cid)),
              f"{runtime.label} still holds container {short(cid)}")
        self.cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=TIMEOUT)
        self.cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                  timeout=TIMEOUT)
        self.pods.remove(pod)
        check(not runtime.holds_pod(runtime.bare(pod)),
              f"{runtime.label} still holds pod {short(pod)}")
        say(f"Stop+RemoveContainer {short(cid)}, Stop+RemovePodSandbox {short(pod)}")
        say(" " * 46 + f"   [{runtime.label} holds neither any more]")

    def run(self) -> None:
        self.start()
        pod_a, config_a = self.run_pod(self.a, "demo-a")
        pod_b, config_b = self.run_pod(self.b, "demo-b")
        cid_a = self.run_container(self.a, pod_a, config_a, "started on runc")
        cid_b = self.run_container(self.b, pod_b, config_b, "started on crun")
        self.exec_sync(self.a, cid_a, "demo-a")
        self.exec_sync(self.b, cid_b, "demo-b")
        self.read_log(cid_a, config_a, "started on runc")
        self.read_log(cid_b, config_b, "started on crun")
        say()
        self.show_lists({pod_a, pod_b}, {cid_a, cid_b})
        say()
        self.remove(self.a, pod_a, cid_a)
        self.remove(self.b, pod_b, cid_b)
        left = self.cri.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=TIMEOUT).items
        check(not left, f"pods left after removal: {[short(p.id) for p in left]}")
        say()


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it starts containerd): sudo .venv/bin/python scripts/demo.py",
              file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="demo-", dir="/tmp"))
    demo = Demo(base)
    failure = ""
    try:
        demo.run()
    except DemoFailed as err:
        failure = str(err)
    except grpc.RpcError as err:
        failure = f"CRI call failed: {err.code().name}: {err.details()}"
    except KeyboardInterrupt:
        failure = "interrupted"
    except Exception as err:  # e.g. runtimes.up failing: report it, still clean up
        failure = f"{type(err).__name__}: {err}"
    finally:
        say("shutting down: criproxy (SIGTERM), then containerd A and B")
        problems = demo.cleanup()
    if failure or problems:
        for problem in ([failure] if failure else []) + problems:
            print(f"\nDEMO FAILED: {problem}", file=sys.stderr)
        print(f"(logs kept in {base})", file=sys.stderr)
        return 1
    shutil.rmtree(base, ignore_errors=True)
    say("demo OK: every step went where it should")
    return 0


if __name__ == "__main__":
    sys.exit(main())
