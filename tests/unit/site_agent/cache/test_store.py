import gzip
import json
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from site_agent.cache.codec import CorruptEntry, decode_batch, encode_batch
from site_agent.cache.keys import CacheBase, StepKey, dataset_fingerprint, prefix_key
from site_agent.cache.store import DEFAULT_MIN_STORE_SECONDS, CacheError, PrefixCache
from site_agent.config import CacheConfig
from site_agent.operators.base import Batch, StepStats

BASE = CacheBase(dataset="d" * 64, sampler="dps", sample_rate_permille=200, sample_seed=3, embedder="emb-a",
                 screening="scr-1", seed=7)
A, B, C, D = (StepKey.of(op, "1", {"x": i}) for i, op in enumerate(("op_a", "op_b", "op_c", "op_d")))


def _batch(tag: str, n: int = 5) -> Batch:
    return {"instruction": [f"q{tag}{i}" for i in range(n)], "answer": [f"a{tag}{i} – é 中文" for i in range(n)]}


def _stats(steps: list[StepKey], seconds: float = 0.5) -> list[StepStats]:
    return [StepStats(op=s.op, kept=5, dropped=0, changed=1, seconds=seconds) for s in steps]


def _put(cache: PrefixCache, steps: list[StepKey], tag: str, n: int = 5, seconds: float = 0.5) -> bool:
    return cache.put(BASE, steps, _batch(tag, n), _stats(steps, seconds))


def test_longest_prefix_is_found_and_counted(tmp_path: Path) -> None:
    with PrefixCache(tmp_path, 10**7) as cache:
        assert cache.lookup_longest(BASE, [A, B, C]) == (0, None)
        assert _put(cache, [A], "1") and _put(cache, [A, B], "12", seconds=0.25)
        n, batch = cache.lookup_longest(BASE, [A, B, C])
        assert n == 2 and batch == _batch("12")
        assert cache.lookup_longest(BASE, [A, C]) == (1, _batch("1"))
        assert cache.lookup_longest(BASE, [B, A]) == (0, None)  # order matters: no prefix of [B, A] stored
        hit = cache.lookup(BASE, [A, B])
        assert hit is not None and hit.stats == tuple(_stats([A, B], 0.25))
        s = cache.stats()
        assert (s.hits, s.misses, s.steps_reused, s.entries) == (3, 2, 5, 2)
        assert s.seconds_saved == pytest.approx(0.5 + 0.5 + 0.5) and s.hit_rate == pytest.approx(0.6)
        assert s.bytes_read > 0 and s.bytes_written == s.bytes_stored > 0


def test_every_key_part_separates_entries(tmp_path: Path) -> None:
    with PrefixCache(tmp_path, 10**7) as cache:
        _put(cache, [A], "x")
        for change in ({"dataset": "e" * 64}, {"sample_rate_permille": 300}, {"sample_seed": 4},
                       {"embedder": "emb-b"}, {"screening": "none"}, {"seed": 8}, {"sampler": "uniform"}):
            other = CacheBase(**{**BASE.__dict__, **change})
            assert cache.lookup_longest(other, [A]) == (0, None), change
        for step in (StepKey.of("op_a", "2", {"x": 0}), StepKey.of("op_a", "1", {"x": 1}),
                     StepKey.of("op_a", "1", {"x": 0}, {"llm": "other-model"})):
            assert cache.lookup_longest(BASE, [step]) == (0, None), step
        assert cache.lookup_longest(BASE, [StepKey.of("op_a", "1", {"x": 0})])[0] == 1


def test_keys_and_fingerprints_are_canonical() -> None:
    assert StepKey.of("f", "1", {"b": 1, "a": 0.5}) == StepKey.of("f", "1", {"a": 0.5, "b": 1})
    assert prefix_key(BASE, [A, B]) != prefix_key(BASE, [B, A]) != prefix_key(BASE, [A])
    assert len(prefix_key(BASE, [A])) == 64
    fp = dataset_fingerprint(_batch("1"))
    assert fp == dataset_fingerprint({"answer": _batch("1")["answer"], "instruction": _batch("1")["instruction"]})
    assert fp != dataset_fingerprint(_batch("2"))
    assert dataset_fingerprint({"instruction": ["ab", "c"], "answer": ["", ""]}) != dataset_fingerprint(
        {"instruction": ["a", "bc"], "answer": ["", ""]})


def test_batches_round_trip_as_plain_data() -> None:
    batch = {"instruction": ["q\nwith break", "", "中文"], "answer": ["°C ’", "x", "y"], "extra": ["1", "2", "3"]}
    data = encode_batch(batch)
    assert data.startswith(b"\xff\xff\xff\xff")  # an Arrow IPC stream
    assert decode_batch(data) == batch and list(decode_batch(data)) == list(batch)
    empty: Batch = {"instruction": [], "answer": []}
    assert decode_batch(encode_batch(empty)) == empty
    # text Arrow cannot hold (not valid UTF-8) goes to gzipped JSON Lines and still round-trips
    odd = {"instruction": ["\ud800 lone surrogate", "q"], "answer": ["a", "b"]}
    data = encode_batch(odd)
    lines = gzip.decompress(data).decode("utf-8", "surrogatepass").split("\n")
    assert json.loads(lines[0]) == {"format": 1, "columns": ["instruction", "answer"], "rows": 2}
    assert json.loads(lines[2]) == {"instruction": "q", "answer": "b"}
    assert decode_batch(data) == odd
    arrow = encode_batch(batch)
    for bad in (b"", b"not gzip", arrow[:-9], arrow[:40], data[:-9],
                gzip.compress(b'{"format":1,"columns":["a"],"rows":2}\n{"a":"x"}'),
                gzip.compress(b'{"format":1,"columns":["a"],"rows":1}\n{"a":1}')):
        with pytest.raises(CorruptEntry):
            decode_batch(bad)


def test_least_recently_used_entries_are_evicted_under_the_budget(tmp_path: Path) -> None:
    size = len(encode_batch(_batch("a", 40)))
    with PrefixCache(tmp_path, int(size * 2.5)) as cache:
        assert _put(cache, [A], "a", 40) and _put(cache, [B], "b", 40)
        assert cache.lookup_longest(BASE, [A])[0] == 1  # A is now more recent than B
        assert _put(cache, [C], "c", 40)
        assert cache.contains(BASE, [A]) and cache.contains(BASE, [C]) and not cache.contains(BASE, [B])
        s = cache.stats()
        assert s.evictions == 1 and s.entries == 2 and s.bytes_stored <= cache.budget_bytes
        assert len(list((tmp_path / "entries").iterdir())) == 2
        assert not _put(cache, [D], "d", 400)  # larger than the whole budget: not stored, nothing evicted
        assert cache.stats().entries == 2


def test_a_corrupt_or_missing_entry_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    with PrefixCache(tmp_path, 10**7) as cache:
        _put(cache, [A], "1")
        _put(cache, [A, B], "12")
        path = tmp_path / "entries" / (prefix_key(BASE, [A, B]) + ".batch")
        path.write_bytes(path.read_bytes()[:-20])  # cut short
        assert cache.lookup_longest(BASE, [A, B]) == (1, _batch("1"))  # falls back to the shorter prefix
        assert not path.exists() and not cache.contains(BASE, [A, B])
        (tmp_path / "entries" / (prefix_key(BASE, [A]) + ".batch")).unlink()
        assert cache.lookup_longest(BASE, [A, B]) == (0, None) and cache.stats().entries == 0
        assert cache.stats().corrupt == 1
        # same size, same gzip framing, one flipped payload byte: the SHA-256 check catches it
        _put(cache, [C], "3")
        path = tmp_path / "entries" / (prefix_key(BASE, [C]) + ".batch")
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
        assert cache.lookup_longest(BASE, [C]) == (0, None) and not path.exists()
        assert _put(cache, [C], "3") and cache.lookup_longest(BASE, [C]) == (1, _batch("3"))


def test_a_damaged_index_starts_an_empty_cache(tmp_path: Path) -> None:
    with PrefixCache(tmp_path, 10**7) as cache:
        _put(cache, [A], "1")
    for f in tmp_path.glob("index.sqlite3*"):
        f.write_bytes(b"this is not a database" * 100)
    with PrefixCache(tmp_path, 10**7) as cache:
        assert cache.lookup_longest(BASE, [A]) == (0, None)
        assert list((tmp_path / "entries").iterdir()) == []  # the orphaned entry file is swept
        assert _put(cache, [A], "1") and cache.lookup_longest(BASE, [A])[0] == 1


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="budget"):
        PrefixCache(tmp_path, -1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="cannot be opened"):
        PrefixCache(tmp_path / "file", 10)
    with PrefixCache(tmp_path / "ok", 10**6) as cache, pytest.raises(CacheError, match="one StepStats per step"):
        cache.put(BASE, [A, B], _batch("1"), _stats([A]))


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf"), True, "0.1"])
def test_min_store_seconds_must_be_finite_and_non_negative(tmp_path: Path, bad: object) -> None:
    with pytest.raises(CacheError, match="min_store_seconds must be a finite number of seconds >= 0"):
        PrefixCache(tmp_path, 10**6, min_store_seconds=bad)  # type: ignore[arg-type]


def test_min_store_seconds_defaults_above_a_write_and_put_ignores_it(tmp_path: Path) -> None:
    with PrefixCache(tmp_path / "default", 10**6) as cache:
        assert cache.min_store_seconds == DEFAULT_MIN_STORE_SECONDS == 0.05
    # the store rule is the executor's: put stores what it is given, however cheap its steps were
    with PrefixCache(tmp_path / "high", 10**6, min_store_seconds=60) as cache:
        assert cache.min_store_seconds == 60.0 and _put(cache, [A], "1", seconds=0.0)
        assert cache.lookup_longest(BASE, [A])[0] == 1
    assert CacheConfig().min_store_ms == 50.0 == DEFAULT_MIN_STORE_SECONDS * 1000
    assert CacheConfig(min_store_ms=0).min_store_ms == 0.0
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="min_store_ms"):
            CacheConfig(min_store_ms=bad)


def test_the_site_config_sets_the_threshold_of_the_sites_cache(tmp_path: Path) -> None:
    from site_agent.config import SiteConfig
    from site_agent.data.loading import save_pairs
    from site_agent.resources import prepare

    save_pairs(_batch("1"), tmp_path / "train.jsonl")
    cfg = SiteConfig.model_validate({
        "site_id": "hospital-a", "tls": {"cert": "c.crt", "key": "c.key", "ca": "ca.crt"}, "audit_key": "a.key",
        "policy": "policy.yaml", "data": {"path": tmp_path / "train.jsonl"}, "embedder": None, "screening": None,
        "cache": {"dir": tmp_path / "cache", "budget_mb": 1, "min_store_ms": 250}})
    resources = prepare(cfg)
    try:
        assert resources.prefix_cache is not None and resources.prefix_cache.min_store_seconds == 0.25
    finally:
        resources.close()


def test_threads_share_one_cache(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with PrefixCache(tmp_path, 10**7) as cache:
        def work(t: int) -> None:
            try:
                for i in range(10):
                    step = StepKey.of("op", "1", {"t": t, "i": i})
                    _put(cache, [A, step], f"{t}-{i}")
                    assert cache.lookup_longest(BASE, [A, step])[1] == _batch(f"{t}-{i}")
            except BaseException as e:  # reported by the main thread
                errors.append(e)
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors and cache.stats().entries == 40
