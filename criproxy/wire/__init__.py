"""What the front and the workers share on the ipc socket between them.

protocol.py is the envelope format (documented there), zmqloop.py the ZeroMQ
socket driven by the asyncio loop, tracecontext.py the W3C trace context an
envelope carries from kubelet's call to the runtime's, aiowait.py the one way
to wait for an asyncio event at most so long, answerlimit.py how an answer over
-maxAnswerBytes is told from the worker to the front.

May import: settings, logs. Never front/, record/, ops/, process/ or workers/:
both sides import wire/, so it can depend on neither.
"""
