"""``autodp site process``: a recipe runs on the site's full data under the site's own policy, and the
processed file holds exactly the rows the summary counts."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from protos.errors import ConfigError
from protos.recipe import Recipe, load_recipe, recipe_from_strategy, write_recipe
from protos.views import OperatorCall, Strategy
from site_agent.cli import app
from site_agent.config import SiteConfig, load_config
from site_agent.data.loading import load_pairs, save_pairs
from site_agent.data.toy import make_toy_dataset
from site_agent.embeddings.base import register_embedder, registered_embedders
from site_agent.errors import DataError
from site_agent.process import RecipeRefused, process_dataset

EMBEDDER = "hashing-process-test"
ROWS = 120


class _HashingEmbedder:
    """Fast and deterministic: hashed character trigrams, L2-normalised (no model to load)."""

    name = EMBEDDER
    dim = 32

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for j in range(max(len(text) - 2, 0)):
                out[i, zlib.crc32(text[j:j + 3].encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        unit: np.ndarray = out / norms
        return unit


if EMBEDDER not in registered_embedders():
    register_embedder(EMBEDDER, _HashingEmbedder)


def _site(tmp: Path, *, screening: bool, allowed: Sequence[str] = ("remove_markup", "normalize_text",
                                                                      "exact_dedup", "length_filter")) -> Path:
    data, labels = make_toy_dataset(ROWS, seed=1, noise_rate=0.4)
    save_pairs({**data, "label": labels}, tmp / "train.jsonl")
    (tmp / "policy.yaml").write_text(yaml.safe_dump({"allowed_operators": list(allowed)}))
    cfg = {"site_id": "hospital-a", "tls": {"cert": "c.crt", "key": "c.key", "ca": "ca.crt"},
           "audit_key": "a.key", "policy": "policy.yaml", "data": {"path": "train.jsonl"},
           "cache": {"dir": "cache"}, "embedder": EMBEDDER if screening else None,
           "screening": {"model_dir": "screening"} if screening else None}
    (tmp / "site.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "site.yaml"


def _recipe(*calls: OperatorCall, use_screening: bool = True) -> Recipe:
    return recipe_from_strategy(Strategy(calls=calls), search_id="s-1", score=0.02, use_screening=use_screening)


CLEANING = (OperatorCall.of("remove_markup"), OperatorCall.of("normalize_text"), OperatorCall.of("exact_dedup"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_full_data_processed_and_written(tmp_path: Path, suffix: str) -> None:
    cfg = load_config(_site(tmp_path, screening=False))
    out = tmp_path / f"processed{suffix}"
    seen: list[str] = []
    summary = process_dataset(cfg, _recipe(*CLEANING), out, progress=seen.append)
    assert summary.rows_in == ROWS and not summary.screened and summary.targets == ROWS
    assert [s.op for s in summary.steps] == ["remove_markup", "normalize_text", "exact_dedup"]
    assert summary.steps[0].changed > 0 and summary.steps[-1].dropped > 0  # the toy noise is there
    assert summary.rows_out == summary.steps[-1].kept < ROWS
    written = load_pairs(out)
    assert len(written["instruction"]) == summary.rows_out and list(written) == ["instruction", "answer"]
    assert not any("<" in a and ">" in a for a in written["answer"])  # markup is gone
    assert seen  # the caller was told what is going on
    assert summary.screening_requested and "no screening model" in summary.lines()[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_screening_processes_only_the_noisy_rows(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, screening=True))
    summary = process_dataset(cfg, _recipe(*CLEANING), tmp_path / "out.jsonl")
    assert summary.screened and 0 < summary.targets < ROWS
    assert summary.targets + summary.untouched == ROWS and summary.steps[0].kept + summary.steps[0].dropped == \
        summary.targets
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == summary.rows_out == summary.untouched + summary.steps[-1].kept
    # the flag wins over the recipe
    off = process_dataset(cfg, _recipe(*CLEANING), tmp_path / "all.jsonl", use_screening=False)
    assert not off.screened and off.targets == ROWS


def test_operator_outside_the_policy_is_refused_before_any_work(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, screening=False, allowed=("remove_markup",)))
    out = tmp_path / "out.jsonl"
    with pytest.raises(RecipeRefused, match=r"step 1 \(exact_dedup\): operator not allowed"):
        process_dataset(cfg, _recipe(OperatorCall.of("remove_markup"), OperatorCall.of("exact_dedup")), out)
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing was even loaded


def test_unknown_operator_in_a_loaded_recipe_is_refused_by_name(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, screening=False))
    (tmp_path / "r.yaml").write_text("search_id: s\nstrategy: [{op: exfiltrate}]\n")
    recipe = load_recipe(tmp_path / "r.yaml")  # the form is fine
    with pytest.raises(RecipeRefused, match=r"step 0 \(exfiltrate\): operator not installed"):
        process_dataset(cfg, recipe, tmp_path / "out.jsonl")


@pytest.mark.parametrize(("call", "expect"), [
    (OperatorCall.of("length_filter", min_answer_chars=10**9), "outside"),
    (OperatorCall.of("remove_markup", dump_rows=True), "no parameter of that name"),
])
def test_bad_parameters_are_refused(tmp_path: Path, call: OperatorCall, expect: str) -> None:
    cfg = load_config(_site(tmp_path, screening=False))
    with pytest.raises(RecipeRefused, match=expect):
        process_dataset(cfg, _recipe(call), tmp_path / "out.jsonl")


def test_operator_this_site_cannot_run_is_refused(tmp_path: Path) -> None:
    cfg: SiteConfig = load_config(_site(tmp_path, screening=False, allowed=("rewrite_answer",)))
    with pytest.raises(RecipeRefused, match=r"rewrite_answer\): needs \['llm'\]"):
        process_dataset(cfg, _recipe(OperatorCall.of("rewrite_answer")), tmp_path / "out.jsonl")


def test_output_rules(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, screening=False))
    with pytest.raises(DataError, match="unsupported output type"):
        process_dataset(cfg, _recipe(), tmp_path / "out.txt")
    with pytest.raises(DataError, match="site's own data file"):
        process_dataset(cfg, _recipe(), tmp_path / "train.jsonl", overwrite=True)
    (tmp_path / "out.jsonl").write_text("keep me\n")
    with pytest.raises(DataError, match="already exists"):
        process_dataset(cfg, _recipe(), tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == "keep me\n"
    summary = process_dataset(cfg, _recipe(), tmp_path / "out.jsonl", overwrite=True)  # no steps: a copy
    assert summary.rows_out == ROWS == len(load_pairs(tmp_path / "out.jsonl")["answer"])


def test_cli_process(tmp_path: Path) -> None:
    site = _site(tmp_path, screening=False)
    write_recipe(tmp_path / "winning.yaml", _recipe(*CLEANING))
    out = tmp_path / "processed.jsonl"
    args = ["process", "--config", str(site), "--recipe", str(tmp_path / "winning.yaml"), "--output", str(out),
            "--no-screening"]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    n = len(out.read_text(encoding="utf-8").splitlines())
    assert f"rows in {ROWS}, rows out {n}" in result.output and "step 2 exact_dedup" in result.output

    again = runner.invoke(app, args)  # the output exists now
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0

    write_recipe(tmp_path / "bad.yaml", _recipe(OperatorCall.of("synthesize_pairs")))
    refused = runner.invoke(app, [*args[:3], "--recipe", str(tmp_path / "bad.yaml"), "--output",
                                  str(tmp_path / "x.jsonl")])
    assert refused.exit_code == 2 and "synthesize_pairs" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "x.jsonl").exists()

    (tmp_path / "broken.yaml").write_text("search_id: s\nstrategy: [\n")
    broken = runner.invoke(app, [*args[:3], "--recipe", str(tmp_path / "broken.yaml"), "--output",
                                 str(tmp_path / "y.jsonl")])
    assert broken.exit_code == 2 and "not valid YAML" in broken.output
    with pytest.raises(ConfigError):
        load_recipe(tmp_path / "broken.yaml")
