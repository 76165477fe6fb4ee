"""supervisord's reload (SIGHUP to criproxy) stops the programs and starts them again
with criproxy's plugins loaded anew; it used to fail loading them and exit."""
from __future__ import annotations

import os
import re
import signal
import time

from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

from tests.support.fakeruntime import start_fake
from tests.support.harness import Proxy, short_dir, start_proxy


def new_front(proxy: Proxy) -> int | None:
    try:
        return proxy.front_pid()
    except (OSError, ValueError):
        return None  # the status file is between fronts


def test_a_reload_serves_again_with_every_plugin() -> None:
    base = short_dir("rl-")
    primary = start_fake(base, "primary")
    proxy = start_proxy(str(base / "primary.sock"), workdir=base, wait_for=["primary"])
    try:
        front = proxy.front_pid()
        os.kill(proxy.supervisord_pid(), signal.SIGHUP)
        deadline = time.monotonic() + 20
        while new_front(proxy) in (None, front):
            assert proxy.proc.poll() is None, proxy.log()[-3000:]
            assert time.monotonic() < deadline, proxy.log()[-3000:]
            time.sleep(0.1)
        proxy.wait_all_up(["primary"])
        stub = api_pb2_grpc.RuntimeServiceStub(proxy.channel())
        assert stub.Version(cri.VersionRequest(), timeout=10).runtime_name
        log = proxy.log()
        assert len(re.findall(r"RPC interface '(logrelay|keeper|wakeup)' initialized", log)) == 6
        assert "Traceback" not in log, log[-3000:]
    finally:
        assert proxy.stop() == 0, proxy.log()[-3000:]
        primary.stop()
