"""Operations: what an operator runs, reads or scrapes.

metrics.py (what the front counts), process_metrics.py (the front process's
own figures), exposition.py (the Prometheus formats), metrics_endpoint.py
(their HTTP endpoint), status.py (`criproxy status`), doctor.py,
doctor_systemd.py and findings.py (`criproxy doctor`), install.py (`criproxy
install-systemd`), spans.py and tracing.py (criproxy's own trace spans,
-otlpEndpoint).

May import: settings, logs, record/, wire/ (the trace context). Never front/
or process/: the front reports into ops, not the other way round.
"""
