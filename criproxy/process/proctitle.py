"""Process titles: `ps` says what each of criproxy's processes is, as gunicorn's do.

A title reads `criproxy: ROLE SOCKET [RUNDIR]`: the role (`supervisor`, `front`,
`worker LABEL`), the socket it serves (supervisor, front) or its runtime's
(worker), and the runtime dir, which tells two criproxy instances on a node apart.
It replaces the interpreter's command line in /proc/<pid>/cmdline (`ps -f`, `pgrep -f`);
the short name in /proc/<pid>/comm (`ps -e`, `top`) becomes the role alone, as
`criproxy`, `criproxy-front` and `criproxy-worker` (15 characters at most).
"""
from __future__ import annotations

from setproctitle import setproctitle, setthreadtitle

from criproxy.settings import Config, Runtime


def title(role: str, socket: str, rundir: str) -> str:
    return f"criproxy: {role} {socket} [{rundir}]"


def _show(full: str, short: str) -> None:
    setproctitle(full)
    setthreadtitle(short)  # the main thread's name is the process's comm


def show_supervisor(config: Config) -> None:
    _show(title("supervisor", config.listen, config.rundir), "criproxy")


def show_front(config: Config) -> None:
    _show(title("front", config.listen, config.rundir), "criproxy-front")


def show_worker(config: Config, runtime: Runtime) -> None:
    _show(title(f"worker {runtime.label}", runtime.socket, config.rundir), "criproxy-worker")
