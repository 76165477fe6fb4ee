"""criproxy: one CRI endpoint for kubelet in front of several container runtimes.

The package is grouped by job (docs/architecture.md walks through it):

    front/    the request path: kubelet's gRPC calls in, routed, rewritten, sent on
    wire/     what the front and the workers (../workers) share: envelopes, sockets,
              the trace context they carry
    record/   the pod record: each runtime's last answers and kubelet's changes
    process/  process life: supervisord and its plugins, one instance per socket,
              process titles, systemd readiness
    ops/      operations: metrics, status, doctor, install-systemd, trace spans

Only the entry points and the modules several parts use stay at this level:
cli.py and __main__.py (the `criproxy` command), settings.py (every setting,
declared once) with setting_values.py (how each kind of value is checked), logs.py (criproxy's log lines), registrations.py (what
registers in -runtimesDir, and the list supervisord's registrar publishes for
the front, the workers, status and doctor) and inotify.py (the directory watch
the registrar and the front share). They import nothing of criproxy's but
each other, so any part may import them without pulling in another.

Imports run one way (tests/unit/test_layout.py checks it, with no circle):
front may use record, ops, process, wire; ops may use record and wire; record,
wire and process use nothing but settings and logs. This file imports nothing:
each process loads only the parts it runs.
"""
