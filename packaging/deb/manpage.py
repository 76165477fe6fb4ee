"""Print criproxy(1), the package's manual page, in roff.

    python3 manpage.py VERSION DATE > criproxy.1

Run by the interpreter of the environment being packaged, so that the options
come from criproxy.settings.SETTINGS, where each is declared once.
"""
from __future__ import annotations

import sys

from criproxy.settings import SETTINGS, Setting

HEAD = r""".TH CRIPROXY 1 "{date}" "criproxy {version}" "criproxy"
.SH NAME
criproxy \- one CRI endpoint for kubelet in front of several container runtimes
.SH SYNOPSIS
.B criproxy
.B \-connect
.I RUNTIMES
.RI [ OPTIONS ]
.br
.B criproxy
.BR status " | " doctor " | " install\-systemd
.RI [ OPTIONS ]
.br
.B criproxy \-\-version
.SH DESCRIPTION
.B criproxy
serves the CRI on a unix socket for kubelet and sends each call to the runtime
it belongs to: the first of
.B \-connect
gets every pod without a
.B kubernetes.io/target\-runtime
annotation, a named runtime the pods that name it.
It runs a front process and one worker per runtime under supervisord.
.PP
.B criproxy status
shows each runtime's state and request rates;
.B criproxy doctor
checks the node's set\-up;
.B criproxy install\-systemd
.I OPTIONS
writes the options to /etc/criproxy/criproxy.env and a kubelet drop\-in
pointing kubelet at the listen socket.
.SH OPTIONS
Options take one dash or two.
"""

TAIL = r""".SH FILES
.TP
.I /etc/criproxy/criproxy.env
the options of the systemd unit (CRIPROXY_FLAGS)
.TP
.I /lib/systemd/system/criproxy.service
the systemd unit; installing the package neither enables nor starts it
.TP
.I /etc/systemd/system/kubelet.service.d/20\-criproxy.conf
kubelet's drop\-in, written by
.B criproxy install\-systemd
.TP
.I /run/criproxy
the runtime dir (\-rundir)
.SH EXIT STATUS
0 after a clean stop; 2 for a configuration error (nothing is started);
1 from
.B status
and
.B doctor
when something is wrong.
.SH SEE ALSO
.BR kubelet (1),
.BR containerd (8),
.BR systemctl (1)
"""


def roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def option(setting: Setting) -> str:
    argument = "" if setting.is_switch else f" {setting.name.upper()}"
    default = "" if setting.default in (None, "", (), False) else \
        f" (default: {setting.format(setting.default)})"
    return f".TP\n.B {roff(setting.flag + argument)}\n{roff(setting.help + default)}\n"


def main() -> None:
    version, date = sys.argv[1:3]
    sys.stdout.write(HEAD.format(version=version, date=date))
    sys.stdout.write("".join(option(s) for s in SETTINGS))
    sys.stdout.write(TAIL)


if __name__ == "__main__":
    main()
