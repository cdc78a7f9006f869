"""bench/bench_proxy.py's core: resolved-pair agreement, per-site fidelity, and one toy site measured end to end with
real LoRAs of a tiny random-weight Llama (seconds each)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from protos.views import OperatorCall
from site_agent.cache.store import PrefixCache
from site_agent.data import make_toy_dataset
from site_agent.evaluation.lora_train import TrainConfig, run_lora
from site_agent.operators.base import Batch
from site_agent.resources import SiteResources
from tests.unit.bench_modules import load_bench
from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("bench_proxy")


def test_agreement_counts_only_the_pairs_the_lora_resolves(bench: ModuleType) -> None:
    proxy = [0.0, 0.3, 0.1, 0.1]
    deltas = [0.0, -0.05, -0.01, 0.02]  # lower loss is better: arm 1 best, then 2, then 0, then 3
    got = bench.agreement(proxy, deltas, 0.0)
    # all 6 pairs resolved; the proxy ties arms 2 and 3 (half) and orders 0 above 3 against the LoRA (0 / 1)
    assert got["pairs"] == 6 and got["agree"] == pytest.approx((4 + 0.5) / 6)
    # a noise of 0.015 (margin 0.03) keeps the pairs more than 0.03 apart: (0,1) 0.05, (1,2) 0.04, (1,3) 0.07;
    # (2,3) lies exactly 0.03 apart, not more; all three ordered as the LoRA orders them
    wide = bench.agreement(proxy, deltas, 0.015)
    assert wide["margin"] == pytest.approx(0.03)
    assert wide["pairs"] == 3 and wide["agree"] == 1.0
    assert bench.agreement([0.1, None], [0.0, -1.0], None)["pairs"] == 0


def test_site_fidelity_ranks_proxy_scores_against_minus_the_loss_difference(bench: ModuleType) -> None:
    def arm(default: float, budget: float, delta: float | None) -> dict[str, object]:
        return {"proxy": {"default": default, "budget": budget}, "loss_delta_mean": delta}

    site = {"seed_noise": 0.001, "arms": {"unprocessed": arm(0.0, 0.0, 0.0), "repair": arm(0.3, 0.1, -0.01),
                                          "drop": arm(0.2, 0.4, -0.2)}}
    f = bench.site_fidelity(site)
    assert f["default"]["top1"] == "repair" and f["default"]["lora_top1"] == "drop"
    assert not f["default"]["same_top1"] and f["default"]["regret"] == pytest.approx(0.19)
    assert f["budget"]["same_top1"] and f["budget"]["kendall_tau"] == pytest.approx(1.0)
    assert f["budget"]["resolved"]["agree"] == 1.0 and f["budget"]["resolved"]["pairs"] == 3


def _site(tmp: Path, rows: int) -> SiteResources:
    data, _ = make_toy_dataset(rows, seed=0)
    held_out, _ = make_toy_dataset(12, seed=1, noise_rate=0.0)
    return SiteResources(data=data, eval_data=held_out, embedder=None, embedding_cache=None, screener=None,
                         screening_report=None, prefix_cache=PrefixCache(tmp / "cache", 16 << 20, durable=False),
                         llm_factory=None)


def test_a_toy_site_is_measured_with_real_loras(bench: ModuleType, tmp_path: Path) -> None:
    site = _site(tmp_path, 60)
    assert site.eval_data is not None
    texts = [t for b in (site.data, site.eval_data) for col in b.values() for t in col]
    folder = build_tiny_model(tmp_path / "tiny", texts)
    held_out = site.eval_data
    trained: list[tuple[int, int]] = []

    def losses(batch: Batch, seed: int) -> list[float] | None:
        trained.append((len(batch["instruction"]), seed))
        cfg = TrainConfig(steps=3, seq_len=32, batch_size=4, seed=seed, lora_dropout=0.0, dtype="float32")
        return run_lora(folder, cfg, batch, held_out).losses

    arms = {"unprocessed": (), "remove_markup": (OperatorCall.of("remove_markup"),),
            "exact_dedup": (OperatorCall.of("exact_dedup"),)}
    oracle = {c: v[:30] for c, v in site.data.items()}
    ceiling = {c: v[15:] for c, v in site.data.items()}
    out = bench.measure_site(site, arms, oracle, 0.5, losses, seeds=1, ceiling=ceiling)
    bare = bench.measure_site(site, {"unprocessed": ()}, None, 0.5, losses, seeds=1)
    site.close()
    assert bare["oracle"] is None and bare["ceiling"] is None
    del trained[6:]
    a = out["arms"]
    assert out["raw_rows"] == 60 and set(a) == set(arms)
    # the unprocessed arm is the baseline: score 0, loss difference 0, a tie on every item; trained once per seed
    assert a["unprocessed"]["proxy"] == {"default": 0.0, "budget": 0.0}
    assert a["unprocessed"]["loss_delta"] == [0.0] and a["unprocessed"]["win_rate"] == [0.5]
    assert a["exact_dedup"]["rows"] <= 60 and a["remove_markup"]["rows"] == 60
    assert all(isinstance(x["loss_delta_mean"], float) for x in a.values())
    assert out["oracle"]["rows"] == 30 and out["oracle"]["strategy"] == "(the labelled-clean rows)"
    assert out["ceiling"]["rows"] == 45 and out["ceiling"]["strategy"] == "(every row before the generator damaged it)"
    assert isinstance(out["ceiling"]["win_rate_mean"], float)
    # unprocessed (seed 0), two arms, the oracle, the ceiling, the seed-noise reference (seed 1)
    assert trained[0] == (60, 0) and trained[-1] == (60, 1) and len(trained) == 6
    assert out["seed_noise"] is not None and out["seed_noise"] >= 0.0
    f = bench.site_fidelity(out)
    assert set(f) == {"default", "budget"} and f["default"]["n"] == 3


@pytest.mark.parametrize("flags", [["--sites", "hospital-z"], ["--arms", "drop_everything"], ["--seeds", "0"]])
def test_a_bad_option_is_one_line_and_exit_code_2_before_any_work(bench: ModuleType, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   flags: list[str]) -> None:
    assert bench.main(["--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not list(tmp_path.iterdir())
