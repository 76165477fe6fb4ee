"""The request path, in the front process: kubelet's CRI call in, its answer out.

front.py serves the listen socket; routing.py says what each method does;
dispatch.py does it (picks runtimes, fans out, merges) with rewrite.py,
naming.py and slim.py putting runtime names on ids and images and taking them
off, and imagepods.py finding the pod an image call is for; workerlink.py
sends each call to its runtime's worker.

May import: settings, logs, wire/, record/, ops/ (metrics, spans) and process/
(instance, readiness). Nothing imports front/ but cli.py. Never workers/: the
front never calls a runtime itself.
"""
