"""`criproxy doctor`: check a node's criproxy set-up and say what to fix.

    criproxy doctor [criproxy's flags]      check the set-up these flags describe
    criproxy doctor [-rundir DIR]           the running instance's (DIR/settings.json),
                                            else /etc/criproxy/criproxy.env

Checks: every runtime socket answers CRI Version (and which CRI version it
speaks), runtime names kubelet would mangle, the listen socket (stale,
wrongly owned, not criproxy), the runtime dir's owner and mode, runtimes the
running front caught claiming other runtimes' pods, whether
kubelet (its command line and its config file) points at the listen socket,
and (doctor_systemd) criproxy.service's state and kubelet's drop-in.
Exit code 1 when something must be fixed, 2 when there is no set-up to check.
"""
from __future__ import annotations

import argparse
import grp
import json
import os
import re
import shlex
import time
from pathlib import Path

import grpc

from cri_api.v1 import api_pb2
from criproxy.ops import doctor_registrations, doctor_systemd
from criproxy.ops.findings import FAIL, OK, TIMEOUT, WARN, Finding, probe_socket
from criproxy.ops.status import claims_line, staleness
from criproxy.settings import (EXIT_CONFIG_ERROR, ConfigError, Config, Runtime, build_parser,
                               config_from_args, load_settings_file)

ENV_FILE = "/etc/criproxy/criproxy.env"
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
# Version request and answer are the same on the wire in runtime.v1 and v1alpha2.
CRI_VERSIONS = ("v1", "v1alpha2")

# --- configuration ----------------------------------------------------------------

def _load_config(flags: list[str], rundir: str | None,
                 env_file: str) -> tuple[Config | None, str]:
    """The set-up to check, and where it came from."""
    if any(f.lstrip("-") == "connect" or f.lstrip("-").startswith("connect=") for f in flags):
        return config_from_args(flags + (["-rundir", rundir] if rundir else [])), "flags"
    settings = Path(rundir or "/run/criproxy") / "settings.json"
    if settings.exists():
        return load_settings_file(str(settings)), str(settings)
    env = Path(env_file)
    if env.exists():
        match = re.search(r"^CRIPROXY_FLAGS=(.*)$", env.read_text(), re.M)
        if match:
            words = shlex.split(match.group(1))
            words = shlex.split(words[0]) if len(words) == 1 else words
            return config_from_args(words + flags + (["-rundir", rundir] if rundir else [])), \
                str(env)
    return None, ""


# --- runtimes ---------------------------------------------------------------------

def cri_version(path: str) -> tuple[str, api_pb2.VersionResponse | None, str]:
    """(CRI version, Version answer, error) of the runtime at `path`."""
    error = ""
    with grpc.insecure_channel("unix://" + path) as channel:
        for version in CRI_VERSIONS:
            call = channel.unary_unary(
                f"/runtime.{version}.RuntimeService/Version",
                request_serializer=api_pb2.VersionRequest.SerializeToString,
                response_deserializer=api_pb2.VersionResponse.FromString)
            try:
                return version, call(api_pb2.VersionRequest(version="0.1.0"),
                                     timeout=TIMEOUT), ""
            except grpc.RpcError as err:
                error = f"{err.code().name}: {err.details()}"
                if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                    return "", None, error
    return "", None, error


def check_runtime(runtime: Runtime, config: Config) -> list[Finding]:
    name = f"runtime {runtime.label} ({runtime.socket})"
    if os.path.realpath(runtime.socket) == os.path.realpath(config.listen):
        return [Finding(FAIL, f"{name} is criproxy's own listen socket",
                        "point -connect at the runtimes' sockets, not at -listen")]
    why = probe_socket(runtime.socket)
    if why:
        return [Finding(FAIL, f"{name}: {why}",
                        f"start the {runtime.label} runtime, or correct its socket in -connect")]
    version, answer, error = cri_version(runtime.socket)
    if answer is None:
        return [Finding(FAIL, f"{name} does not answer CRI Version: {error}",
                        "is this a CRI runtime's socket? check the runtime's logs")]
    about = (f"{answer.runtime_name} {answer.runtime_version}, "
             f"CRI {version} (runtime API {answer.runtime_api_version or '?'})")
    if version != "v1":
        return [Finding(WARN, f"{name} speaks only CRI {version}: {about}; criproxy passes "
                              "calls to it, but methods only v1 has answer UNIMPLEMENTED",
                        "upgrade the runtime to one that speaks CRI runtime.v1")]
    return [Finding(OK, f"{name} answers: {about}")]


def check_names(config: Config) -> list[Finding]:
    found = []
    for runtime in config.runtimes:
        if not runtime.is_primary and "." not in runtime.name:
            found.append(Finding(
                WARN, f"runtime name {runtime.name!r} has no dot: kubelet turns image "
                      f"{runtime.name}/IMAGE into docker.io/{runtime.name}/IMAGE, which "
                      f"criproxy sends to the primary runtime",
                f"rename it with a dot, e.g. {runtime.name}.local (in -connect and in pod "
                f"annotations and image names)"))
    return found


# --- criproxy's own files ------------------------------------------------------------

def check_rundir(config: Config) -> list[Finding]:
    rundir = Path(config.rundir)
    if rundir.is_symlink():
        return [Finding(FAIL, f"runtime dir {rundir} is a symlink; criproxy refuses it",
                        f"rm {rundir}")]
    if not rundir.exists():
        return [Finding(OK, f"runtime dir {rundir} does not exist yet; criproxy creates it "
                            "(mode 0700)")]
    info = rundir.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return [Finding(FAIL, f"runtime dir {rundir} is owned by uid {info.st_uid} with mode "
                              f"{info.st_mode & 0o777:o}; criproxy refuses to start with it",
                        f"chown {os.geteuid()} {rundir} && chmod 0700 {rundir}")]
    return [Finding(OK, f"runtime dir {rundir}: uid {info.st_uid}, mode 0700")]


def _running_front(config: Config) -> dict | None:
    try:
        status = json.loads(config.status_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or staleness(status, time.time()):
        return None
    return status


def check_claims(config: Config) -> list[Finding]:
    """Runtimes the running front caught answering about other runtimes' pods."""
    status = _running_front(config)
    return [Finding(WARN, f"runtime {r['label']} {claims_line(r)}",
                    f"runtime {r['label']} lists pods it does not run (a bug, or a runtime "
                    "that is not to be trusted): criproxy keeps kubelet from acting on them; "
                    "check that runtime")
            for r in (status or {}).get("runtimes", []) if r.get("foreign_claims")]


def check_listen(config: Config, unit_explains: bool = False) -> list[Finding]:
    """`unit_explains`: criproxy.service's finding already says why nothing serves."""
    path = Path(config.listen)
    if path.is_symlink() or (path.exists() and not path.is_socket()):
        return [Finding(FAIL, f"listen path {path} exists and is not a socket; "
                              "criproxy will not start", f"move {path} away")]
    if unit_explains and probe_socket(str(path)):
        return []  # "start it" would be wrong advice for a unit that is started
    if not path.exists():
        return [Finding(WARN, f"criproxy is not running: no socket at {path}",
                        "start it: systemctl start criproxy")]
    why = probe_socket(str(path))
    if why:
        return [Finding(FAIL, f"criproxy's listen socket: {why}: kubelet cannot reach any "
                              "runtime", "start criproxy (it replaces a stale socket)")]
    found = [_check_socket_owner(path, config)]
    version, answer, error = cri_version(str(path))
    status = _running_front(config)
    if status is None:
        found.append(Finding(WARN, f"something listens on {path}, but no running criproxy "
                                   f"reports in {config.rundir}",
                             "is -listen or -rundir different from the running instance's?"))
    elif answer is None or version != "v1":
        found.append(Finding(FAIL, f"criproxy (front pid {status['front_pid']}) on {path} "
                                   f"fails CRI Version: {error}",
                             "Version goes to the primary runtime: see its finding above"))
    else:
        found.append(Finding(OK, f"criproxy (front pid {status['front_pid']}) answers on "
                                 f"{path}: primary runtime {answer.runtime_name} "
                                 f"{answer.runtime_version}"))
    if status is not None:
        for r in status["runtimes"]:
            if r["state"] != "up":
                found.append(Finding(WARN, f"criproxy sees runtime {r['label']} "
                                           f"{r['state']}: {r['reason']}"))
    return found


def _check_socket_owner(path: Path, config: Config) -> Finding:
    info = path.stat()
    mode = info.st_mode & 0o777
    if mode & 0o002:
        return Finding(FAIL, f"listen socket {path} has mode {mode:o}: anyone on the node "
                             "can run containers", "restart criproxy (it sets mode 0660)")
    if config.socket_group:
        try:
            gid = grp.getgrnam(config.socket_group).gr_gid
        except KeyError:
            return Finding(FAIL, f"-socketGroup {config.socket_group} does not exist",
                           f"groupadd {config.socket_group}, or drop -socketGroup")
        if info.st_gid != gid:
            return Finding(WARN, f"listen socket {path} has group {info.st_gid}, not "
                                 f"-socketGroup {config.socket_group}", "restart criproxy")
    if info.st_uid != 0:
        return Finding(WARN, f"listen socket {path} is owned by uid {info.st_uid}, not root")
    return Finding(OK, f"listen socket {path}: uid {info.st_uid}, gid {info.st_gid}, "
                       f"mode {mode:o}")


# --- kubelet --------------------------------------------------------------------------

def kubelet_processes(proc: str) -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        args = [a for a in args if a]
        if args and (comm == "kubelet" or os.path.basename(args[0]) == "kubelet"):
            found.append((int(entry.name), args))
    return sorted(found)


def flag_value(args: list[str], name: str) -> str | None:
    """The value of --name=V / --name V / -name V in a command line (last one wins)."""
    value = None
    for i, arg in enumerate(args):
        bare = arg.lstrip("-")
        if arg.startswith("-") and bare == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("-") and bare.startswith(name + "="):
            value = bare[len(name) + 1:]
    return value


def config_value(text: str, key: str) -> str | None:
    """A top-level `key: value` of a kubelet config file (no YAML library needed)."""
    match = re.search(rf"^{key}:\s*(.*?)\s*(#.*)?$", text, re.M)
    return match.group(1).strip("'\"") if match else None


def _same_socket(endpoint: str, listen: str) -> bool:
    path = endpoint[len("unix://"):] if endpoint.startswith("unix://") else endpoint
    return os.path.realpath(path) == os.path.realpath(listen)


def _endpoint_findings(where: str, runtime_ep: str | None, image_ep: str | None,
                       config: Config, flag_form: bool) -> list[Finding]:
    ours = f"unix://{config.listen}"
    fix = (f"--container-runtime-endpoint={ours}" if flag_form
           else f"containerRuntimeEndpoint: {ours}")
    if runtime_ep is None:
        return [Finding(FAIL, f"{where} names no container runtime endpoint (kubelet's "
                              "default is containerd's socket, not criproxy's)", f"set {fix}")]
    found = []
    if _same_socket(runtime_ep, config.listen):
        found.append(Finding(OK, f"{where} uses criproxy's socket ({runtime_ep})"))
    else:
        found.append(Finding(FAIL, f"{where} uses {runtime_ep}, not criproxy's socket "
                                   f"{config.listen}", f"set {fix}"))
    if image_ep and not _same_socket(image_ep, config.listen):
        image_fix = (f"--image-service-endpoint={ours}" if flag_form
                     else f"imageServiceEndpoint: {ours}")
        found.append(Finding(FAIL, f"{where} sends image calls to {image_ep}, past criproxy",
                             f"set {image_fix}, or remove it"))
    return found


def check_kubelet(config: Config, proc: str, config_path: str) -> list[Finding]:
    processes = kubelet_processes(proc)
    found: list[Finding] = []
    if not processes:
        found.append(Finding(OK, "no kubelet runs on this node; checking its config file only"))
    paths = {config_path}
    for pid, args in processes:
        runtime_ep = flag_value(args, "container-runtime-endpoint")
        image_ep = flag_value(args, "image-service-endpoint")
        conf = flag_value(args, "config")
        if runtime_ep is not None:
            found += _endpoint_findings(f"kubelet (pid {pid}) command line", runtime_ep,
                                        image_ep, config, True)
            paths.discard(config_path)  # its flag overrides the config file
        elif conf:
            paths = {conf}
    for path in sorted(paths):
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            if processes:
                found.append(Finding(WARN, f"kubelet config {path} does not exist"))
            else:
                found.append(Finding(OK, f"no kubelet config at {path}: no kubelet to check"))
            continue
        except OSError as err:
            found.append(Finding(WARN, f"cannot read kubelet config {path}: {err}"))
            continue
        found += _endpoint_findings(f"kubelet config {path}",
                                    config_value(text, "containerRuntimeEndpoint"),
                                    config_value(text, "imageServiceEndpoint"), config, False)
    return found


# --- command ------------------------------------------------------------------------

def diagnose(config: Config, proc: str = "/proc", kubelet_config: str = KUBELET_CONFIG,
             root: Path = Path("/"), systemctl: str = "systemctl") -> list[Finding]:
    unit = doctor_systemd.unit_state(root, doctor_systemd.run_systemctl(systemctl))
    found: list[Finding] = []
    for runtime in config.runtimes:
        found += check_runtime(runtime, config)
    registered_findings, registered = doctor_registrations.check_registrations(config)
    found += registered_findings
    for registration in registered:
        found += check_runtime(registration.runtime, config)
    found += check_names(config)
    found += check_rundir(config)
    found += doctor_systemd.check_unit(unit, config.listen)
    found += check_listen(config, unit is not None and unit.explains_listen)
    found += check_claims(config)
    found += check_kubelet(config, proc, kubelet_config)
    found += doctor_systemd.check_drop_ins(root, config.listen)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="criproxy doctor", parents=[build_parser()], conflict_handler="resolve",
        description="Check this node's criproxy set-up. Give criproxy's flags, or -rundir "
                    "of a running instance (default: /run/criproxy, then " + ENV_FILE + ").")
    parser.add_argument("--env-file", default=ENV_FILE, help=argparse.SUPPRESS)
    parser.add_argument("--kubelet-config", default=KUBELET_CONFIG,
                        help="kubelet's config file (default: %(default)s)")
    parser.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    # For tests: the tree to find systemd's files under, and the systemctl to ask.
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)
    parser.add_argument("--systemctl", default="systemctl", help=argparse.SUPPRESS)
    known, _ = parser.parse_known_args(argv)
    flags = _criproxy_flags(argv)
    try:
        config, source = _load_config(flags, known.rundir, known.env_file)
    except ConfigError as err:
        print(f"criproxy doctor: {err}")
        return EXIT_CONFIG_ERROR
    if config is None:
        print("criproxy doctor: no set-up to check: give criproxy's flags (-connect ...), or "
              f"-rundir of a running criproxy; {ENV_FILE} does not exist either")
        return EXIT_CONFIG_ERROR
    print(f"checking the set-up from {source}: -connect "
          + ",".join(r.socket if r.is_primary else f"{r.name}:{r.socket}"
                     for r in config.runtimes) + f" -listen {config.listen}")
    found = diagnose(config, known.proc, known.kubelet_config, Path(known.root),
                     known.systemctl)
    for finding in found:
        print(finding)
    failures = sum(f.level == FAIL for f in found)
    warnings = sum(f.level == WARN for f in found)
    print(f"criproxy doctor: {failures} to fix, {warnings} warning(s)")
    return 1 if failures else 0


_OWN_OPTIONS = ("--env-file", "--kubelet-config", "--proc", "--root", "--systemctl")


def _criproxy_flags(argv: list[str]) -> list[str]:
    """argv without doctor's own options and without -rundir (handled apart)."""
    flags, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN_OPTIONS or name.lstrip("-") == "rundir":
            skip = "=" not in arg
            continue
        flags.append(arg)
    return flags
