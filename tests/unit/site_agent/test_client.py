import random

from site_agent.client import Backoff


def test_backoff_is_jittered_exponential_and_capped() -> None:
    b = Backoff(0.5, 4.0, random.Random(1))
    delays = [b.next() for _ in range(12)]
    caps = [min(4.0, 0.5 * 2**i) for i in range(12)]
    assert all(0.0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == len(delays)  # jitter: no two sites retry in lockstep
    b.reset()
    assert b.next() <= 0.5
