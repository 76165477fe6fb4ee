"""Process life: starting, keeping and naming criproxy's processes.

supervise.py starts supervisord with the front and one worker per runtime;
keeper.py, logrelay.py and wakeup.py are supervisord plugins (on
eventplugin.py) that retry programs, relay every line to the journal and wake
supervisord on signals; instance.py keeps one criproxy per socket and runtime
dir; lifeline.py ends a child with its parent; proctitle.py sets what `ps`
shows; readiness.py tells systemd that the front serves and still answers.

May import: settings, logs. Never front/, ops/, record/, wire/ or workers/:
the plugins run inside supervisord, which must not load the request path.
"""
