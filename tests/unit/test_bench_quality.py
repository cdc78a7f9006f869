"""bench/bench_quality.py's core on toy data: curves, regret, pooled win rates, a tiny two-site search with a
baseline and with the LLM meta-agent (a 2-layer random-weight Llama with the real SmolLM2 tokenizer behind the
local backend, as tests/unit/coordinator/test_local_agent.py builds it)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from pydantic import ValidationError

from coordinator.agent import LLMProposer
from coordinator.proposers import RandomProposer
from protos.catalog import check_strategy, index_catalog
from protos.views import EvalSettings, EvaluatorKind, OperatorCall, OperatorSpec, Strategy
from site_agent.cache.store import PrefixCache
from site_agent.data import make_toy_dataset
from site_agent.evaluation.base import create_evaluator
from site_agent.operators.registry import operator_spec, registered_operators
from site_agent.resources import SiteResources
from tests.unit.bench_modules import load_bench
from tests.unit.coordinator.tiny_chat import build_tiny_chat_model, one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench("bench_quality")




@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama with random weights and the real SmolLM2 tokenizer and chat template."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


PLAIN = {"normalize_text", "exact_dedup", "remove_markup", "length_filter"}


def _catalog() -> list[OperatorSpec]:
    return [operator_spec(c) for n, c in sorted(registered_operators().items()) if n in PLAIN]


def _site(tmp: Path, seed: int, rows: int = 80) -> SiteResources:
    data, _ = make_toy_dataset(rows, seed=seed)
    return SiteResources(data=data, eval_data=None, embedder=None, embedding_cache=None, screener=None,
                         screening_report=None, prefix_cache=PrefixCache(tmp, 16 << 20, durable=False),
                         llm_factory=None)


def test_best_so_far_skips_failures_and_regret_is_against_the_reference(bench: ModuleType) -> None:
    curve = bench.best_so_far([None, 0.1, float("nan"), 0.05, 0.3, None])
    assert curve == [None, 0.1, 0.1, 0.1, 0.3, 0.3]
    assert bench.regret(curve, 0.5) == [None, 0.4, 0.4, 0.4, pytest.approx(0.2), pytest.approx(0.2)]


def test_pooled_win_rate_pools_the_sites_both_sides_have(bench: ModuleType) -> None:
    a = {"s1": [1.0, 2.0], "s2": [0.5, 0.5], "only-a": [0.0]}
    b = {"s1": [2.0, 2.0], "s2": [1.0, 0.1]}
    assert bench.pooled_win_rate(a, b) == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert bench.pooled_win_rate(a, {"other": [1.0]}) is None


def test_loss_delta_and_win_interval_pool_the_items_of_the_common_sites(bench: ModuleType) -> None:
    a = {"s1": [1.0, 2.0, 0.5], "only-a": [9.0]}
    b = {"s1": [2.0, 2.0, 1.5]}
    assert bench.mean_loss_delta(a, b) == pytest.approx((-1.0 + 0.0 - 1.0) / 3)
    assert bench.mean_loss_delta(a, {"other": [1.0]}) is None
    low, high = bench.win_rate_interval(a, b)
    assert 0.0 <= low <= bench.pooled_win_rate(a, b) <= high <= 1.0
    assert bench.win_rate_interval(a, b) == (low, high)  # seeded: the same interval every run
    always = {"s": [0.0] * 40}
    assert bench.win_rate_interval(always, {"s": [1.0] * 40}) == (1.0, 1.0)
    assert bench.win_rate_interval(a, {"other": [1.0]}) is None


def test_labelled_clean_rows_keep_the_clean_rows_of_the_loaded_data_or_nothing(bench: ModuleType,
                                                                                tmp_path: Path) -> None:
    import json

    site = _site(tmp_path / "cache", 0, rows=6)
    labels = ["clean", "markup", "clean", "duplicate", "clean", "clean"]
    rows = [{"instruction": q, "answer": a, "label": label}
            for q, a, label in zip(site.data["instruction"], site.data["answer"], labels, strict=True)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    clean = bench.labelled_clean_rows(site, train)
    assert clean is not None and clean["instruction"] == [site.data["instruction"][i] for i in (0, 2, 4, 5)]
    assert set(clean) == set(site.data)
    rows.reverse()  # the file's rows are not the loaded rows in order: no guessing
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert bench.labelled_clean_rows(site, train) is None
    site.close()


def test_undamaged_rows_are_the_sites_facts_before_the_damage_or_nothing(bench: ModuleType, tmp_path: Path) -> None:
    import json

    from site_agent.data.benchmark import build_benchmark

    build = {"sites": 3, "total_pairs": 300, "eval_per_site": 10}
    build_benchmark(tmp_path / "b", **build)
    train = tmp_path / "b" / "hospital-c" / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    data = {"instruction": [r["instruction"] for r in rows], "answer": [r["answer"] for r in rows]}
    site = SiteResources(data=data, eval_data=None, embedder=None, embedding_cache=None, screener=None,
                         screening_report=None, prefix_cache=PrefixCache(tmp_path / "c", 16 << 20, durable=False),
                         llm_factory=None)
    plain = bench.undamaged_rows(site, "hospital-c", train, pairs=300, sites=3, eval_per_site=10)
    assert plain is not None and len(plain["instruction"]) == len(rows)
    same = [i for i, r in enumerate(rows) if r["label"] == "clean"]
    assert 0 < len(same) < len(rows)
    assert all((plain["instruction"][i], plain["answer"][i]) == (rows[i]["instruction"], rows[i]["answer"])
               for i in same)
    assert plain != data
    # another build's rows (other parameters) do not line up with the loaded ones: nothing, not a guess
    assert bench.undamaged_rows(site, "hospital-c", train, pairs=300, sites=3, eval_per_site=10, seed=1) is None
    site.close()


def test_the_report_names_the_ceiling_of_cleaning_when_the_undamaged_reference_ran(bench: ModuleType,
                                                                                  tmp_path: Path) -> None:
    import copy
    import json

    results = Path(__file__).resolve().parents[2] / "bench" / "results"
    report = json.loads((results / "quality_medium-c.json").read_text(encoding="utf-8"))  # a real SmolLM2 report
    assert set(report["references"]) == {"seed_noise", "labelled_clean"}
    before = tmp_path / "before.md"
    bench.write_markdown(before, report)
    assert "ceiling" not in before.read_text(encoding="utf-8").split("## What limits")[1]
    for win, verdict in ((0.71, "below the goal: no cleaning strategy"), (0.9, "at or above the goal.")):
        with_ceiling = copy.deepcopy(report)
        with_ceiling["references"]["undamaged"] = {"what": bench.REFERENCES["undamaged"], "rows": {"hospital-c": 600},
                                                   "vs_unprocessed": win, "interval": [win - 0.1, win + 0.1],
                                                   "loss_delta": -0.2}
        out = tmp_path / f"{win}.md"
        bench.write_markdown(out, with_ceiling)
        text = out.read_text(encoding="utf-8")
        assert f"every row undamaged, the ceiling of cleaning, wins {win:.0%}" in text
        assert f"| undamaged | {bench.REFERENCES['undamaged']} | hospital-c: 600 | {win:.0%}" in text
        assert f"the ceiling of cleaning) wins {win:.0%}, {verdict}" in text
        assert "The oracle is not a strict ceiling" not in text


def test_search_scores_every_strategy_on_every_site_at_the_budget(bench: ModuleType, tmp_path: Path) -> None:
    sites = {"a": _site(tmp_path / "a", 0), "b": _site(tmp_path / "b", 1)}
    settings = EvalSettings(evaluator=EvaluatorKind.QUALITY_PROXY, sample_rate_permille=1000, use_screening=False)
    run = bench.search(sites, RandomProposer(seed=3), "random", 3, _catalog(), rounds=2, k=3, settings=settings,
                       evaluator=create_evaluator(EvaluatorKind.QUALITY_PROXY))
    assert len(run.strategies) == len(run.scores) == 6
    assert all(s is not None for s in run.scores)
    i = run.best_index()
    assert i is not None and run.scores[i] == max(s for s in run.scores if s is not None)
    # rounds numbered from 1 as in the search; a baseline has no meta-agent log
    assert [(e.round_no, e.proposed, e.propose_calls, e.llm_calls) for e in run.rounds] == [(1, 3, 1, None),
                                                                                            (2, 3, 1, None)]
    assert bench.llm_summary([run], 2)["searches"] == 0 and run.origins == [""] * 6
    # each site's own evaluator (as the LoRA evaluator holds a site's held-out set): same proposer, same scores
    own = {s: create_evaluator(EvaluatorKind.QUALITY_PROXY) for s in sites}
    again = bench.search(sites, RandomProposer(seed=3), "random", 3, _catalog(), rounds=2, k=3, settings=settings,
                         evaluator=own)
    assert again.scores == run.scores
    for r in sites.values():
        r.close()


def test_processed_rows_applies_the_strategy_to_every_row(bench: ModuleType, tmp_path: Path) -> None:
    site = _site(tmp_path, 0, rows=120)
    out = bench.processed_rows(site, Strategy(calls=(OperatorCall.of("exact_dedup"),)))
    n_unique = len(set(zip(site.data["instruction"], site.data["answer"], strict=True)))
    assert len(out["instruction"]) == n_unique < 120
    assert bench.processed_rows(site, Strategy())["answer"] == site.data["answer"]
    site.close()


def test_the_meta_agent_searches_at_the_same_budget_and_its_log_is_kept(bench: ModuleType, tiny_chat: Path,
                                                                        tmp_path: Path) -> None:
    sites = {"a": _site(tmp_path / "a", 0), "b": _site(tmp_path / "b", 1)}
    catalog = _catalog()
    agent = {**bench.AGENT, "model_dir": str(tiny_chat)}
    proposer = bench.make_proposer("llm", 2, agent)
    assert isinstance(proposer, LLMProposer) and proposer.backend == "local" and proposer.seed == 2
    assert proposer.max_reasks == bench.AGENT["max_reasks"] and proposer.client.threads == bench.AGENT["threads"]
    settings = EvalSettings(evaluator=EvaluatorKind.QUALITY_PROXY, sample_rate_permille=1000, use_screening=False)
    run = bench.search(sites, proposer, "llm", 2, catalog, rounds=2, k=3, settings=settings,
                       evaluator=create_evaluator(EvaluatorKind.QUALITY_PROXY))
    proposer.close()
    assert len(run.strategies) == len(run.scores) == 6  # the baselines' budget
    assert len({s.key for s in run.strategies}) == 6
    assert all(check_strategy(s, index_catalog(catalog), bench.MAX_LENGTH) == [] for s in run.strategies)
    for j, e in enumerate(run.rounds):
        assert e.round_no == j + 1 and e.proposed == 3 and e.propose_s > 0
        assert e.llm_calls is not None and 1 <= e.llm_calls <= 1 + bench.AGENT["max_reasks"]
        assert e.from_llm is not None and e.filled is not None and e.from_llm + e.filled == 3
        assert len(e.problems) == e.llm_calls  # one repair summary per answer, counts and names only
    assert run.origins.count("model") == sum(e.from_llm or 0 for e in run.rounds)
    assert set(run.origins) <= {"model", "fill"} and len(run.origins) == 6
    summary = bench.llm_summary([run], 2)
    assert summary["mode"] == "choose"  # the local backend's default: the model picks among candidates
    assert summary["choice_calls"] == sum(e.llm_calls or 0 for e in run.rounds) == 2
    assert 0 <= summary["choices_first_k"] <= 2 and 1 <= summary["choice_rank_mean"] <= 9
    assert summary["searches"] == 1 and summary["from_llm"] + summary["filled"] == 6
    assert [p["proposed"] for p in summary["per_round"]] == [3, 3]
    offered = dict(summary["problems"])
    assert offered.get("strategies offered", 0) + offered.get("choices offered", 0) >= summary["from_llm"]
    assert summary["pick_origins"] == [run.origins[run.best_index()]]
    for r in sites.values():
        r.close()


def test_agent_settings_are_validated_as_the_search_config_is(bench: ModuleType) -> None:
    with pytest.raises(ValidationError):
        bench.make_proposer("llm", 0, {**bench.AGENT, "threads": 0})
    with pytest.raises(ValidationError):
        bench.make_proposer("llm", 0, {**bench.AGENT, "base_url": "http://127.0.0.1:9"})  # local takes no URL
    assert isinstance(bench.make_proposer("tpe", 0), object) and bench.make_proposer("random", 4).seed == 4


def test_repair_summaries_fold_into_counts(bench: ModuleType) -> None:
    counts = dict(bench._problem_counts([
        "6 strategies offered, 1 kept; strategy already evaluated or repeated x5",
        "5 strategies offered, 2 kept; strategy already evaluated or repeated x2; unknown operator x1",
        "the answer was not JSON", "no answer"]))
    assert counts == {"strategies offered": 11, "strategies kept": 3, "strategy already evaluated or repeated": 7,
                      "unknown operator": 1, "the answer was not JSON": 1, "no answer": 1}


def test_an_agent_file_gives_the_settings_used_and_the_words_the_report_names_them_with(
        bench: ModuleType, tmp_path: Path) -> None:
    served = tmp_path / "served.yaml"
    served.write_text("backend: openai\nbase_url: http://127.0.0.1:8000/v1\nmodel: Qwen/Qwen2.5-7B-Instruct\n"
                      "api_key_env: BENCH_AGENT_KEY\nmax_reasks: 1\n", encoding="utf-8")
    settings = bench.load_agent_settings(served)
    assert settings == {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1",
                        "model": "Qwen/Qwen2.5-7B-Instruct", "api_key_env": "BENCH_AGENT_KEY", "max_reasks": 1}
    assert bench.describe_agent(settings) == "backend openai, model Qwen/Qwen2.5-7B-Instruct"
    assert "SmolLM2" not in bench.describe_agent(settings)
    # JSON is YAML; no backend: a base_url means openai, as in the search config
    as_json = tmp_path / "served.json"
    as_json.write_text('{"base_url": "http://127.0.0.1:8000", "model": "m"}', encoding="utf-8")
    assert bench.load_agent_settings(as_json)["backend"] == "openai"
    # a local model folder relative to the file; the default is the bundled SmolLM2
    local = tmp_path / "local.yaml"
    local.write_text("model_dir: models/tiny\nthreads: 2\n", encoding="utf-8")
    assert bench.load_agent_settings(local) == {"backend": "local", "threads": 2,
                                                "model_dir": str((tmp_path / "models" / "tiny").resolve())}
    assert bench.describe_agent(bench.load_agent_settings(local)) == "backend local, model tiny on the CPU"
    assert bench.describe_agent(bench.AGENT) == "bundled SmolLM2-135M-Instruct on the CPU"
    # what the report records: a key could hide in a URL's user info or query; never recorded
    recorded = bench.recorded_agent({**settings, "base_url": "http://user:s3cret@127.0.0.1:8000/v1?key=s3cret"})
    assert recorded["base_url"] == "http://127.0.0.1:8000/v1" and "s3cret" not in str(recorded)
    assert recorded["api_key_env"] == "BENCH_AGENT_KEY"


@pytest.mark.parametrize(("text", "says"), [
    (None, "file not found"),
    ("backend: [openai\n", "not valid YAML"),
    ("- backend: openai\n", "top level"),
    ("agent:\n  backend: local\n", "no 'agent:' around them"),
    ("backend: local\napi_key: sk-s3cret\n", "agent.api_key: unknown key"),
    ("backend: local\nthreads: 0\n", "agent.threads"),
    ("backend: openai\nbase_url: http://127.0.0.1:8000\n", "needs base_url and model"),
    ("backend: vllm\n", "agent.backend"),
    ("backend: openai\nbase_url: http://llm.example.com/v1\nmodel: m\n", "not loopback, private or site-local"),
    ("backend: openai\nbase_url: http://127.0.0.1:8000\nmodel: m\napi_key_env: BENCH_UNSET_KEY_VARIABLE\n",
     "BENCH_UNSET_KEY_VARIABLE is not set"),
])
def test_a_bad_agent_file_is_one_line_and_exit_code_2_before_any_work(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        text: str | None, says: str) -> None:
    monkeypatch.delenv("BENCH_UNSET_KEY_VARIABLE", raising=False)
    path = tmp_path / "agent.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert bench.main(["--agent", str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and says in captured.err and "s3cret" not in captured.err
    assert not out.exists()  # failed before building anything


def test_a_budget_share_out_of_range_is_one_line_and_exit_code_2(bench: ModuleType, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert bench.main(["--proxy-budget-share", "1.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--proxy-budget-share" in err and not out.exists()
    assert bench.main(["--lora-sites", "hospital-z", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hospital-a, hospital-b, hospital-c" in err and not out.exists()
    assert bench.main(["--proposers", "llm,random", "--lora-proposers", "tpe", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lora-proposers" in err and "llm, random" in err and not out.exists()


def test_the_meta_agent_from_an_agent_file_proposes_through_an_openai_endpoint(bench: ModuleType,
                                                                             tmp_path: Path) -> None:
    import json

    from tests.fakes.openai_server import FakeOpenAIServer, scripted

    answer = json.dumps({"strategies": [[{"op": "exact_dedup", "params": {}}], [{"op": "normalize_text", "params": {}}],
                                        [{"op": "remove_markup", "params": {}}, {"op": "exact_dedup", "params": {}}]]})
    sites = {"a": _site(tmp_path / "a", 0)}
    with FakeOpenAIServer(scripted(answer), model="served-model") as server:
        path = tmp_path / "agent.yaml"
        path.write_text(f"base_url: {server.base_url}/v1\nmodel: served-model\nmax_reasks: 0\nbackoff_s: 0.01\n",
                        encoding="utf-8")
        settings = bench.load_agent_settings(path)
        proposer = bench.make_proposer("llm", 0, settings)
        assert isinstance(proposer, LLMProposer) and proposer.backend == "openai"
        settings_eval = EvalSettings(evaluator=EvaluatorKind.QUALITY_PROXY, sample_rate_permille=1000,
                                     use_screening=False)
        run = bench.search(sites, proposer, "llm", 0, _catalog(), rounds=1, k=3, settings=settings_eval,
                           evaluator=create_evaluator(EvaluatorKind.QUALITY_PROXY))
        proposer.close()
        [body] = server.posted()
    assert body["model"] == "served-model"
    assert [c.op for s in run.strategies for c in s.calls] == ["exact_dedup", "normalize_text", "remove_markup",
                                                               "exact_dedup"]
    assert run.origins == ["model"] * 3 and run.rounds[0].from_llm == 3 and run.rounds[0].filled == 0
    sites["a"].close()


def test_the_report_names_the_meta_agent_that_ran(bench: ModuleType) -> None:
    served = {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "served-model"}
    goals = {"proposer": "llm", "best_baseline": "tpe", "vs_unprocessed": 0.5, "vs_unprocessed_met": False,
             "vs_random": 0.5, "vs_random_met": False, "best_baseline_vs_unprocessed": None,
             "best_baseline_vs_random": None}
    report = {"goals": goals, "lora": {"model": "tiny"}, "mode": "quick", "mode_config": {}, "llm_seeds": 1,
              "agent": served, "agent_model": bench.describe_agent(served)}
    head = bench._goal_lines(report)[0]
    assert "backend openai, model served-model" in head and "SmolLM2" not in head
    assert "bundled SmolLM2-135M-Instruct" in bench._goal_lines({**report, "agent": bench.AGENT,
                                                                "agent_model": None})[0]
    llm = {"searches": 1, "per_round": [], "from_llm": 0, "filled": 0, "propose_s_per_round": None,
           "pick_origins": [], "problems": []}
    text = "\n".join(bench._llm_lines(llm, 3, served, "served.yaml"))
    assert "Model: backend openai, model served-model" in text and "from `--agent served.yaml`" in text
    assert "the demo's" in "\n".join(bench._llm_lines(llm, 3, bench.AGENT))


def test_picks_that_keep_the_same_rows_are_marked_in_the_pairwise_table(bench: ModuleType) -> None:
    assert bench._same_note([True, False, None]) == " (1 of 2 seeds: same rows)"
    assert bench._same_note([False, None]) == "" and bench._same_note(None) == ""


def test_win_rates_by_site_get_a_table_when_there_are_several_lora_sites(bench: ModuleType) -> None:
    by_site = {"llm": [{"hospital-a": [0.6, -0.01], "hospital-b": [0.9, -0.2]},
                       {"hospital-a": [0.8, -0.03], "hospital-b": [0.7, -0.1]}],
               "random": [None, {"hospital-a": [0.5, 0.0]}]}
    text = "\n".join(bench._by_site_table(by_site))
    assert "| proposer | hospital-a | hospital-b |" in text
    assert "| llm | 70%, -0.0200 | 80%, -0.1500 |" in text and "| random | 50%, +0.0000 | - |" in text
    assert bench._by_site_table({"llm": [{"hospital-a": [0.6, -0.01]}]}) == []  # one site: the pooled table says it


def test_full_mode_runs_on_every_site_with_references_and_the_loras_budget(bench: ModuleType, tmp_path: Path) -> None:
    import json

    full = bench.MODES["full"]
    assert full.model == "smollm2" and not full.lora_sites and set(full.lora_proposers) == set(bench.PROPOSERS)
    assert full.references and full.seeds >= 3 and full.llm_seeds >= 3
    # the proxy scores as for the LoRA's fixed training budget: steps x batch / rows per site
    assert full.proxy_budget_share == pytest.approx(full.lora_steps * full.batch_size / (full.pairs // full.sites),
                                                    abs=0.01)
    assert all(not m.proxy_budget_share for n, m in bench.MODES.items() if n != "full")
    assert "not run" in bench.MODES["gpu"].run_time
    results = Path(__file__).resolve().parents[2] / "bench" / "results"
    report = json.loads((results / "quality_medium-c.json").read_text(encoding="utf-8"))  # a real SmolLM2 report
    for mode, full_line, gpu_line in (("medium", "a separate run, see `quality_full.md`", "**not run** (no GPU lent"),
                                      ("full", "run, see above", "**not run** (no GPU lent")):
        out = tmp_path / f"{mode}.md"
        bench.write_markdown(out, {**report, "mode": mode})
        goals = out.read_text(encoding="utf-8").split("## Goals")[1].split("## 1.")[0]
        assert f"full mode (SmolLM2-135M LoRA on every site for every proposer's picks, several seeds, references): " \
               f"{full_line}" in goals
        assert f"GPU-scale mode (150-step LoRAs, seq len 128, 2000 rows per site, 5 seeds): {gpu_line}" in goals
        assert ("the 2-core box's full mode" in goals) == (mode == "full")


def test_the_report_says_how_the_loras_averaged_their_loss(bench: ModuleType, tmp_path: Path) -> None:
    import json

    results = Path(__file__).resolve().parents[2] / "bench" / "results"
    report = json.loads((results / "quality_medium-c.json").read_text(encoding="utf-8"))
    for loss_mean, words in ((None, "averaged per row"), ("row", "averaged per row"),
                             ("token", "averaged per answer token of a batch (`--loss-mean token`)")):
        out = tmp_path / f"{loss_mean}.md"
        bench.write_markdown(out, {**report, **({"loss_mean": loss_mean} if loss_mean else {})})
        assert f"training loss {words}" in out.read_text(encoding="utf-8")
    with pytest.raises(SystemExit) as bad:  # argparse: one usage line, exit code 2
        bench.main(["--loss-mean", "tokens", "--out", str(tmp_path / "bad")])
    assert bad.value.code == 2 and not (tmp_path / "bad").exists()
