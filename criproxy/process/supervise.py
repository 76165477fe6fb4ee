"""Starting the whole system: supervisord running the front and the workers.

`criproxy` validates its settings, writes them (and supervisord's
configuration, derived from the top-level supervisord.conf template) into
the runtime dir, then becomes supervisord itself (in-process, so no extra
process sits on the node) until supervisord shuts down.
"""
from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path

from criproxy.process import proctitle
from criproxy.process.instance import hold_rundir, refuse_live_socket
from criproxy.settings import BOOT_FAILURE_FILE, EXIT_CONFIG_ERROR, Config, ConfigError, to_values
# A crash-looping program is retried this long after supervisord gives up on it.
RETRY_AFTER = 5.0


def prepare_rundir(path: str) -> Path:
    """Create the private runtime dir, or refuse one that others could write."""
    rundir = Path(path)
    if rundir.is_symlink():
        raise ConfigError(f"runtime dir {rundir} is a symlink; refusing to use it")
    rundir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = rundir.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"runtime dir {rundir} must be owned by uid {os.geteuid()} with mode 0700 "
            f"(it is owned by uid {info.st_uid}, mode {info.st_mode & 0o777:o})")
    return rundir


def render_supervisord_conf(config: Config) -> str:
    template = resources.files("criproxy").joinpath("supervisord.conf").read_text()
    return template.format(
        rundir=config.rundir, python=sys.executable, settings=config.settings_file,
        config_exit=EXIT_CONFIG_ERROR, worker_count=len(config.runtimes),
        front_stopwait=int(config.drain) + 3, retry_after=RETRY_AFTER)


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def write_runtime_files(config: Config) -> Path:
    rundir = prepare_rundir(config.rundir)
    hold_rundir(rundir)
    refuse_live_socket(Path(config.listen))
    (rundir / BOOT_FAILURE_FILE).unlink(missing_ok=True)
    _write_private(config.settings_file, json.dumps(to_values(config), indent=1))
    conf = rundir / "supervisord.conf"
    _write_private(conf, render_supervisord_conf(config))
    return conf


def run_supervised(config: Config) -> int:
    """Run supervisord in the foreground; it handles SIGTERM/SIGINT itself."""
    conf = write_runtime_files(config)
    proctitle.show_supervisor(config)
    _run_supervisord(conf)
    return _exit_code(Path(config.rundir))


def _run_supervisord(conf: Path) -> None:
    """supervisord's own main loop, with criproxy's options (logrelay.RelayedOptions);
    a reload (SIGHUP) runs it again on the same configuration."""
    from supervisor import supervisord
    from supervisor.states import SupervisorStates

    from criproxy.process.logrelay import RelayedOptions
    first = True
    while True:
        options = RelayedOptions()
        options.realize(["-n", "-c", str(conf)], doc=supervisord.__doc__)
        options.first, options.test = first, False
        supervisord.go(options)
        options.close_httpservers()
        options.close_logger()
        first = False
        if options.mood < SupervisorStates.RESTARTING:
            return


def _exit_code(rundir: Path) -> int:
    failure = rundir / BOOT_FAILURE_FILE
    if failure.exists():
        print(f"criproxy: {failure.read_text().strip()}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0
