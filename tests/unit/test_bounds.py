"""The pieces that bound what a runtime makes the front spend (issue 30, item 4): the
settings, the event stream's token bucket, telling gRPC's own refusal of an answer
over -maxAnswerBytes from a runtime's, the -maxRuntimes cut (the real criproxy:
tests/process/test_bounds.py)."""
from __future__ import annotations

import pytest

from criproxy.front.ratelimit import TokenBucket
from criproxy.registrations import Registration, within_limit
from criproxy.settings import ConfigError, config_from_args
from criproxy.wire import answerlimit

LIMIT = 1024 * 1024


def test_the_bounds_are_settings_with_checked_values() -> None:
    config = config_from_args(["-connect", "/a"])
    assert (config.max_answer_bytes, config.max_runtimes) == (16 * 1024 * 1024, 8)
    assert (config.event_rate, config.event_burst) == (100.0, 1000)
    for flag, bad in [("-maxAnswerBytes", "1000"), ("-eventRate", "0"),
                      ("-eventBurst", "0.5"), ("-maxRuntimes", "0")]:
        with pytest.raises(ConfigError, match=flag):
            config_from_args(["-connect", "/a", flag, bad])


def test_a_token_bucket_allows_a_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.time_to_full() == 1.5
    now[0] = 0.5  # one token back
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] = 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def test_grpcs_own_refusal_is_told_from_a_runtimes() -> None:
    ours = "Stream removed (CLIENT: Received message larger than max (2097152 vs. 1048576))"
    assert answerlimit.refused_size(ours, LIMIT) == 2097152
    # The runtime refusing kubelet's request, or another limit than ours: not an answer.
    assert answerlimit.refused_size("SERVER: Received message larger than max (9 vs. 8)",
                                    8) is None
    assert answerlimit.refused_size(ours, 4 * LIMIT) is None
    said = answerlimit.too_big("alt", "/runtime.v1.RuntimeService/ListContainers", 2097152,
                               LIMIT)
    assert said == ("runtime alt answered ListContainers with 2097152 bytes, "
                    "over -maxAnswerBytes (1048576 bytes)")
    assert answerlimit.is_too_big("alt", said) and not answerlimit.is_too_big("vm", said)


def test_registrations_past_the_limit_are_refused_and_the_known_keep_their_place() -> None:
    found = {name: Registration(name, f"/r/{name}.sock") for name in ("a", "b", "c", "d")}
    admitted, refused = within_limit(found, kept={"d", "gone"}, limit=3)
    assert list(admitted) == ["a"]  # d and gone (socket missing) hold two places
    assert [r.entry for r in refused] == ["b.sock", "c.sock"]
    assert "-maxRuntimes" in refused[0].reason
    assert within_limit(found, kept=set(), limit=8) == (found, [])
