import importlib.util
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, Field

from protos.views import EvalSettings, OperatorCall, Strategy, Team
from site_agent.cache.store import CacheError, PrefixCache
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import DataError, OperatorError
from site_agent.executor import run_strategy
from site_agent.operators import Batch, Operator, OperatorParams, register_operator, registered_operators, registry
from site_agent.operators.context import RunContext
from site_agent.pipeline import ROW_COLUMN, execute, uniform_sample

FULL = EvalSettings(sample_rate_permille=1000, use_screening=False, use_cache=False)
CLEANING = Strategy(calls=(
    OperatorCall.of("remove_markup"),
    OperatorCall.of("normalize_text"),
    OperatorCall.of("length_filter", min_answer_chars=20, max_answer_chars=400),
    OperatorCall.of("exact_dedup"),
))


class _TagParams(OperatorParams):
    tag: int = Field(default=0, ge=0, le=99)
    drop_every: int = Field(default=0, ge=0, le=99)


class _Tag(Operator):
    """Test-only: appends ``|tag`` to every answer, optionally drops every n-th row, counts its runs."""

    name = "test_pipeline_tag"
    team = Team.OPTIMIZATION
    Params: ClassVar[type[BaseModel]] = _TagParams
    runs: ClassVar[list[int]] = []

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = self.params
        assert isinstance(p, _TagParams)
        type(self).runs.append(p.tag)
        n = len(batch["answer"])
        keep = [not (p.drop_every and i % p.drop_every == 0) for i in range(n)]
        return {**batch, "answer": [a + f"|{p.tag}" for a in batch["answer"]]}, keep


class _LabelScreener:
    """Screens by the toy labels it was given (an oracle), counting calls."""

    def __init__(self, labels: Sequence[str], version: str = "oracle-1") -> None:
        self.mask = np.array([lab != "clean" for lab in labels])
        self.version = version
        self.calls = 0

    def noisy_proba(self, batch: Batch) -> np.ndarray:
        return self.mask.astype(np.float64)

    def noisy_mask(self, batch: Batch, threshold: float = 0.5) -> np.ndarray:
        self.calls += 1
        assert len(batch["answer"]) == len(self.mask)
        return self.mask.copy()


class _NapParams(OperatorParams):
    ms: int = Field(default=0, ge=0, le=1000)


class _Nap(Operator):
    """Test-only: sleeps ``ms`` milliseconds and changes nothing: a model-bound step, deterministically slow."""

    name = "test_pipeline_nap"
    team = Team.GENERATION
    Params: ClassVar[type[BaseModel]] = _NapParams
    runs: ClassVar[list[int]] = []

    def apply(self, batch: Batch) -> tuple[Batch, list[bool]]:
        p = self.params
        assert isinstance(p, _NapParams)
        type(self).runs.append(p.ms)
        time.sleep(p.ms / 1000)
        return batch, [True] * len(batch["answer"])


@pytest.fixture(autouse=True)
def _tag_operator(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    registered_operators()  # built-ins in before the copy: the test operators vanish with the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_operator(_Tag)
    register_operator(_Nap)
    _Tag.runs.clear()
    _Nap.runs.clear()
    yield


def _tags(*tags: int, drop_every: int = 0) -> Strategy:
    return Strategy(calls=tuple(OperatorCall.of("test_pipeline_tag", tag=t, drop_every=drop_every) for t in tags))


def _nap(ms: int) -> OperatorCall:
    return OperatorCall.of("test_pipeline_nap", ms=ms)


def test_a_shared_prefix_is_reused_and_only_the_rest_runs(tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(60, seed=2)
    settings = FULL.model_copy(update={"use_cache": True})
    with PrefixCache(tmp_path, 10**8, min_store_seconds=0) as cache:
        first = execute(raw, _tags(1, 2, 3), settings, context=RunContext(), cache=cache)
        assert _Tag.runs == [1, 2, 3] and first.cache_hits == 0 and first.cached == (False,) * 3
        _Tag.runs.clear()
        second = execute(raw, _tags(1, 2, 4), settings, context=RunContext(), cache=cache)
        assert _Tag.runs == [4]  # only the third step ran
        assert second.steps_reused == 2 and second.cached == (True, True, False) and second.operators_run == 1
        assert second.seconds_saved == pytest.approx(sum(s.seconds for s in first.steps[:2]))
        assert [s.op for s in second.steps] == ["test_pipeline_tag"] * 3
        assert second.batch == run_strategy(raw, _tags(1, 2, 4))[0]
        _Tag.runs.clear()
        again = execute(raw, _tags(1, 2, 4), settings, context=RunContext(), cache=cache)
        assert _Tag.runs == [] and again.steps_reused == 3 and again.batch == second.batch
        # the full params are the key: an explicit default is the same call, another value is not
        same = Strategy(calls=(OperatorCall.of("test_pipeline_tag", tag=1),))
        assert execute(raw, same, settings, context=RunContext(), cache=cache).steps_reused == 1
        assert execute(raw, _tags(1), settings, context=RunContext(seed=5), cache=cache).steps_reused == 0
        assert cache.stats().hits == 3


def test_cached_runs_give_exactly_the_uncached_output(tmp_path: Path) -> None:
    raw, labels = make_toy_dataset(400, seed=4)
    screener = _LabelScreener(labels)
    for rate in (1000, 300):
        settings = EvalSettings(sample_rate_permille=rate, seed=9, use_screening=True, use_cache=True)
        plain = execute(raw, CLEANING, settings.model_copy(update={"use_cache": False}), context=RunContext(),
                        screener=screener)
        with PrefixCache(tmp_path / str(rate), 10**8, min_store_seconds=0) as cache:
            cold = execute(raw, CLEANING, settings, context=RunContext(), screener=screener, cache=cache)
            warm = execute(raw, CLEANING, settings, context=RunContext(), screener=screener, cache=cache)
            partial = Strategy(calls=(*CLEANING.calls[:2], OperatorCall.of("length_filter")))
            mixed = execute(raw, partial, settings, context=RunContext(), screener=screener, cache=cache)
        assert plain.batch == cold.batch == warm.batch and warm.steps_reused == 4 and warm.operators_run == 0
        assert warm.steps == cold.steps and mixed.steps_reused == 2
        assert mixed.batch == execute(raw, partial, settings.model_copy(update={"use_cache": False}),
                                      context=RunContext(), screener=screener).batch
        assert list(plain.batch) == list(raw) and ROW_COLUMN not in plain.batch


def test_pts_processes_only_noisy_rows_and_keeps_the_input_order() -> None:
    raw, labels = make_toy_dataset(300, seed=5)
    screener = _LabelScreener(labels)
    settings = FULL.model_copy(update={"use_screening": True})
    res = execute(raw, _tags(7, drop_every=3), settings, context=RunContext(), screener=screener)
    noisy = [i for i, lab in enumerate(labels) if lab != "clean"]
    clean = [i for i, lab in enumerate(labels) if lab == "clean"]
    kept_noisy = [i for k, i in enumerate(noisy) if k % 3]  # the operator drops every third target
    assert (res.n_targets, res.n_clean, res.screened) == (len(noisy), len(clean), True)
    expected = sorted(clean + kept_noisy)
    assert res.batch["instruction"] == [raw["instruction"][i] for i in expected]
    assert res.batch["answer"] == [raw["answer"][i] + ("|7" if labels[i] != "clean" else "") for i in expected]
    assert res.n_output == len(expected) and res.steps[0].kept == len(kept_noisy)


def test_uniform_sampling_keeps_the_noisy_share() -> None:
    raw, labels = make_toy_dataset(1000, seed=6, noise_rate=0.3)
    screener = _LabelScreener(labels)
    settings = EvalSettings(sample_rate_permille=200, seed=1, use_screening=True, use_cache=False)
    res = execute(raw, Strategy(), settings, context=RunContext(), screener=screener)
    n_noisy = int(screener.mask.sum())
    assert res.sampler == "uniform" and res.n_sampled == round(0.2 * n_noisy) + round(0.2 * (1000 - n_noisy))
    assert res.n_targets == round(0.2 * n_noisy)
    again = execute(raw, Strategy(), settings, context=RunContext(), screener=screener)
    other = execute(raw, Strategy(), settings.model_copy(update={"seed": 2}), context=RunContext(),
                    screener=screener)
    assert again.batch == res.batch != other.batch
    idx = uniform_sample(np.array([True] * 3 + [False] * 97), 0.1, seed=0)
    assert idx.size == 11 and (idx < 3).sum() == 1 and list(idx) == sorted(idx)


class _HashEmbedder:
    """Deterministic unit vectors: enough for DPS to select by, no model needed."""

    name = "test-hash-emb"
    dim = 16

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        rng = np.random.default_rng([len(t) for t in texts[:1]] or [0])
        x = rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        unit: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
        return unit


def test_dps_sampling_keeps_proportions_and_feeds_the_cache_key(tmp_path: Path) -> None:
    missing = [m for m in ("site_agent.sampling.dps", "site_agent.embeddings.cache") if importlib.util.find_spec(m)
               is None]
    if missing:
        pytest.skip(f"DPS path needs {missing} (written by another helper)")
    from site_agent.embeddings.cache import EmbeddingCache

    raw, labels = make_toy_dataset(500, seed=8)
    screener = _LabelScreener(labels)
    settings = EvalSettings(sample_rate_permille=200, seed=3, use_screening=True, use_cache=True)
    vectors = EmbeddingCache(tmp_path / "emb")
    with PrefixCache(tmp_path / "prefix", 10**8, min_store_seconds=0) as cache:
        res = execute(raw, CLEANING, settings, context=RunContext(), embedder=_HashEmbedder(), screener=screener,
                      cache=cache, embedding_cache=vectors)
        assert vectors.misses == 1
        n_noisy = int(screener.mask.sum())
        assert res.sampler == "dps" and res.n_targets == round(0.2 * n_noisy)
        assert res.n_clean == round(0.2 * (500 - n_noisy))
        uniform = execute(raw, CLEANING, settings, context=RunContext(), screener=screener, cache=cache)
        assert uniform.sampler == "uniform" and uniform.steps_reused == 0  # another sample, another key
        again = execute(raw, CLEANING, settings, context=RunContext(), embedder=_HashEmbedder(), screener=screener,
                        cache=cache, embedding_cache=vectors)
        assert again.steps_reused == 4 and again.batch == res.batch and vectors.hits == 1
    plain = execute(raw, CLEANING, settings.model_copy(update={"use_cache": False}), context=RunContext(),
                    embedder=_HashEmbedder(), screener=screener)
    assert plain.batch == res.batch


def test_settings_switch_each_acceleration_off(tmp_path: Path) -> None:
    raw, labels = make_toy_dataset(200, seed=7)
    screener = _LabelScreener(labels)
    with PrefixCache(tmp_path, 10**8, min_store_seconds=0) as cache:
        res = execute(raw, _tags(1), FULL, context=RunContext(), screener=screener, cache=cache)
        assert screener.calls == 0 and cache.stats().entries == 0 and cache.stats().misses == 0
        assert (res.sampler, res.screened, res.n_sampled, res.n_targets, res.n_clean) == ("none", False, 200, 200, 0)
        assert all(a.endswith("|1") for a in res.batch["answer"])
        on = execute(raw, _tags(1), EvalSettings(), context=RunContext(), screener=screener, cache=cache)
        assert screener.calls == 1 and on.screened and on.sampler == "uniform" and cache.stats().entries == 1
        # an accelerator given as None is off whatever the settings say
        off = execute(raw, _tags(1), EvalSettings(sample_rate_permille=1000), context=RunContext())
        assert not off.screened and off.n_targets == 200 and off.cache_hits == 0


def test_failures_are_clear_and_the_cache_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, labels = make_toy_dataset(50, seed=1)
    screener = _LabelScreener(labels)
    with pytest.raises(OperatorError, match="unknown operator 'ghost'"):
        execute(raw, Strategy(calls=(OperatorCall.of("ghost"),)), EvalSettings(), context=RunContext(),
                screener=screener)
    assert screener.calls == 0  # nothing ran before the bad call was found
    with pytest.raises(DataError, match="reserved column"):
        execute({**raw, ROW_COLUMN: raw["answer"]}, _tags(1), FULL, context=RunContext())
    with PrefixCache(tmp_path, 10**8, min_store_seconds=0) as cache:
        def broken(*args: object) -> bool:
            raise CacheError("prefix cache write failed: OSError")

        monkeypatch.setattr(cache, "put", broken)
        res = execute(raw, _tags(1, 2), FULL.model_copy(update={"use_cache": True}), context=RunContext(),
                      cache=cache)
        assert res.batch == run_strategy(raw, _tags(1, 2))[0]
        assert (res.prefixes_stored, res.prefixes_skipped) == (0, 0)  # tried, failed: neither stored nor cheap
    assert "answer" not in repr(res) and raw["answer"][0] not in repr(res)


def test_a_selection_memo_screens_and_samples_a_batch_once_per_setting() -> None:
    from site_agent.pipeline import SelectionMemo

    raw, labels = make_toy_dataset(300, seed=5)
    screener, emb = _LabelScreener(labels), _HashEmbedder()
    memo = SelectionMemo(raw)
    settings = EvalSettings(sample_rate_permille=200, seed=2, use_screening=True, use_cache=False)
    first = execute(raw, CLEANING, settings, context=RunContext(), embedder=emb, screener=screener, memo=memo)
    base = execute(raw, Strategy(), settings, context=RunContext(), embedder=emb, screener=screener, memo=memo)
    assert screener.calls == 1 and memo.hits == 1  # the baseline reused the screening and the sample
    assert base.screening_seconds == 0.0 and base.n_sampled == first.n_sampled
    fresh = execute(raw, CLEANING, settings, context=RunContext(), embedder=emb, screener=screener)
    assert fresh.batch == first.batch  # the memo changes nothing but the time
    # another setting is its own entry; another batch is never served from this memo
    execute(raw, CLEANING, settings.model_copy(update={"seed": 3}), context=RunContext(), embedder=emb,
            screener=screener, memo=memo)
    assert screener.calls == 3 and memo.hits == 1
    other = {c: list(v) for c, v in raw.items()}
    execute(other, CLEANING, settings, context=RunContext(), embedder=emb, screener=screener, memo=memo)
    assert screener.calls == 4 and memo.hits == 1


CACHED = FULL.model_copy(update={"use_cache": True})


def test_with_a_zero_threshold_every_prefix_is_stored(tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(60, seed=2)
    with PrefixCache(tmp_path, 10**8, min_store_seconds=0) as cache:
        res = execute(raw, _tags(1, 2, 3), CACHED, context=RunContext(), cache=cache)
        assert (res.prefixes_stored, res.prefixes_skipped) == (3, 0) and cache.stats().entries == 3
    # an entry over the whole budget is not stored, and not counted as skipped for being cheap either
    with PrefixCache(tmp_path / "tiny", 16, min_store_seconds=0) as cache:
        res = execute(raw, _tags(1, 2), CACHED, context=RunContext(), cache=cache)
        assert (res.prefixes_stored, res.prefixes_skipped) == (0, 0) and cache.stats().entries == 0


def test_cheap_steps_are_recomputed_rather_than_stored(tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(60, seed=2)
    plain = execute(raw, _tags(1, 2, 3), FULL, context=RunContext())
    with PrefixCache(tmp_path, 10**8, min_store_seconds=10.0) as cache:
        first = execute(raw, _tags(1, 2, 3), CACHED, context=RunContext(), cache=cache)
        assert (first.prefixes_stored, first.prefixes_skipped) == (0, 3)
        s = cache.stats()
        assert (s.entries, s.bytes_written) == (0, 0)
        _Tag.runs.clear()
        again = execute(raw, _tags(1, 2, 3), CACHED, context=RunContext(), cache=cache)
        assert _Tag.runs == [1, 2, 3] and again.cache_hits == 0 and again.operators_run == 3
    assert first.batch == again.batch == plain.batch and first.n_output == plain.n_output


def test_a_slow_step_is_stored_and_a_strategy_sharing_it_reuses_it(tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(40, seed=3)
    with PrefixCache(tmp_path, 10**8, min_store_seconds=0.1) as cache:
        first = execute(raw, Strategy(calls=(_nap(200), *_tags(1, 2).calls)), CACHED, context=RunContext(),
                        cache=cache)
        # the slow step's prefix is stored; the cheap steps after it are not: with the nap's result stored,
        # recomputing them costs only their own (tiny) time
        assert (first.prefixes_stored, first.prefixes_skipped) == (1, 2) and cache.stats().entries == 1
        _Nap.runs.clear()
        _Tag.runs.clear()
        second = execute(raw, Strategy(calls=(_nap(200), *_tags(3).calls)), CACHED, context=RunContext(),
                         cache=cache)
        assert _Nap.runs == [] and _Tag.runs == [3] and second.cached == (True, False)
        assert second.steps_reused == 1 and second.seconds_saved >= 0.2
        assert (second.prefixes_stored, second.prefixes_skipped) == (0, 1)  # the hit counts as stored
    assert second.batch["answer"] == [a + "|3" for a in raw["answer"]]


def test_the_time_that_counts_is_the_time_since_the_last_stored_prefix(tmp_path: Path) -> None:
    raw, _ = make_toy_dataset(20, seed=4)
    with PrefixCache(tmp_path, 10**8, min_store_seconds=0.25) as cache:
        # 0.15 s alone is below the threshold; 0.3 s since nothing was stored reaches it
        res = execute(raw, Strategy(calls=(_nap(150), _nap(150), *_tags(1).calls)), CACHED, context=RunContext(),
                      cache=cache)
        assert (res.prefixes_stored, res.prefixes_skipped) == (1, 2)
        again = execute(raw, Strategy(calls=(_nap(150), _nap(150), *_tags(2).calls)), CACHED,
                        context=RunContext(), cache=cache)
        assert again.steps_reused == 2 and _Nap.runs == [150, 150]
