"""The HTML search report: every plot is there as inline SVG, nothing points outside the file, strings are
escaped, and degenerate searches render."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from coordinator.report_html import render_html, write_html

FIGURES = ("plot-scores", "plot-best-so-far", "plot-time", "plot-cache", "plot-epsilon")
SVG_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
SITES = ("hospital-a", "hospital-b", "hospital-c")


def _site_entry(score: float | None, *, status: str | None = "ok", state: str = "done", dp: bool = False,
                step: int = 0) -> dict[str, Any]:
    return {"state": state, "status": status, "score": score, "eval_ms": 4000 + 300 * step,
            "processing_ms": 900 + 50 * step, "cache_saved_ms": 200 * step, "cache_hits": step,
            "operators_run": 3, "sampled_permille": 400, "targets_permille": 120,
            "epsilon_spent": 0.25 if dp else 0.0, "epsilon_remaining": (8.0 - 0.25 * (step + 1)) if dp else 0.0}


def sample_report(proposer: str = "llm", search_id: str = "s-20260101-abc", shift: float = 0.0) -> dict[str, Any]:
    """Three sites, three rounds of three strategies; one site failed once, one never answered once."""
    names = ["exact_dedup() -> html_cleanup()", "near_dedup(threshold=0.88) -> pii_mask(mode=replace)",
             "length_filter(min_chars=8) -> quality_select(keep=0.7)"]
    strategies, rounds, step = [], [], 0
    best_so_far: float | None = None
    for round_no in range(1, 4):
        aggregates = []
        for index, name in enumerate(names):
            base = -0.02 + 0.01 * round_no + 0.008 * index + shift
            sites = {"hospital-a": _site_entry(round(base + 0.004, 4), step=step),
                     "hospital-b": _site_entry(round(base - 0.003, 4), dp=True, step=step),
                     "hospital-c": _site_entry(round(base + 0.001, 4), step=step)}
            if round_no == 2 and index == 1:
                sites["hospital-b"] = _site_entry(None, status="policy_refused", dp=True, step=step)
            if round_no == 3 and index == 0:
                sites["hospital-c"] = _site_entry(None, status=None, state="expired", step=step)
            ok = [e["score"] for e in sites.values() if e["score"] is not None]
            aggregate = round(sum(ok) / len(ok), 4)
            aggregates.append(aggregate)
            strategies.append({"round": round_no, "index": index, "key": f"k{round_no}{index}",
                               "strategy": f"{name} #{round_no}", "calls": [], "aggregate_score": aggregate,
                               "sites": sites})
            step += 1
        best_so_far = max([*aggregates, *([best_so_far] if best_so_far is not None else [])])
        rounds.append({"round": round_no, "evaluated": 3, "best": max(aggregates),
                       "mean": sum(aggregates) / 3, "best_so_far": best_so_far})
    best = max(strategies, key=lambda s: s["aggregate_score"])
    return {
        "search_id": search_id, "proposer": proposer, "stopped_because": "budget of 3 rounds used",
        "sites": list(SITES), "notes": ["round 3 strategy 0: site hospital-c did not answer (expired)"],
        "best": best,
        "best_per_site": {s: {"strategy": best["strategy"], "key": best["key"],
                              "score": best["sites"][s]["score"] or 0.0} for s in SITES},
        "strategies": strategies, "rounds": rounds,
        "per_site": {s: {"tasks": 9, "ok": 8, "eval_ms": 52_000 + 9_000 * i, "processing_ms": 11_000 + 2_000 * i,
                         "cache_saved_ms": 6_000 - 1_500 * i, "est_saved_by_sampling_ms": 30_000 + 4_000 * i,
                         "cache_hit_rate": 0.45 - 0.1 * i, "epsilon_spent": 2.25 if s == "hospital-b" else 0.0,
                         "epsilon_remaining": 5.75 if s == "hospital-b" else None}
                     for i, s in enumerate(SITES)},
        "recipe": "runs/s-20260101-abc/best-recipe.yaml",
    }


def baselines() -> list[dict[str, Any]]:
    return [sample_report("random", "s-random", shift=-0.01), sample_report("evolutionary", "s-evo", shift=-0.004),
            sample_report("tpe", "s-tpe", shift=-0.006)]


def _figure(page: str, fig_id: str) -> str:
    match = re.search(rf'<figure id="{fig_id}">(.*?)</figure>', page, re.S)
    assert match, fig_id
    return match.group(1)


def test_every_plot_is_inline_svg_and_nothing_points_outside() -> None:
    page = render_html(sample_report(), baselines())
    for fig_id in FIGURES:
        body = _figure(page, fig_id)
        assert "<svg" in body and "</svg>" in body and "<figcaption>" in body, fig_id
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= SVG_NAMESPACES, urls - SVG_NAMESPACES
    assert "<script" not in page.lower() and "<link" not in page.lower() and "src=" not in page
    for label in ("random", "evolutionary", "tpe", "llm (this search)"):
        assert label in _figure(page, "plot-best-so-far")
    assert "<text" in _figure(page, "plot-scores")  # svg.fonttype none: labels stay text, not paths
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids repeat across the inline SVGs"
    for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', page):
        assert ref in ids, ref
    assert "runs/s-20260101-abc/best-recipe.yaml" in page and "did not answer (expired)" in page


def test_table_lists_every_strategy_with_failures() -> None:
    report = sample_report()
    page = render_html(report)
    assert page.count("<tr") == 1 + len(report["strategies"])
    assert "policy_refused" in page and "expired" in page
    assert page.count('<tr class="best">') == 1


def test_strings_are_escaped() -> None:
    report = sample_report(proposer='<b>"x"</b>', search_id="<img onerror=1>")
    report["strategies"][0]["strategy"] = "exact_dedup() -> <script>alert(1)</script>"
    report["best"] = report["strategies"][0]
    report["notes"] = ["<script>bad()</script> & more"]
    report["sites"][0] = "<site>"
    page = render_html(report, [sample_report(proposer="$x^2$ <i>")])
    assert "<script>" not in page and "<img" not in page and "<site>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;bad()&lt;/script&gt; &amp; more" in page


@pytest.mark.parametrize("case", ["empty", "no_strategies", "all_none", "one_site", "no_per_site", "garbage"])
def test_degenerate_reports_render(case: str) -> None:
    report: dict[str, Any]
    if case == "empty":
        report = {}
    elif case == "no_strategies":
        report = {"search_id": "s", "proposer": "random", "sites": ["a", "b"], "strategies": [], "best": None,
                  "best_per_site": {"a": None, "b": None}, "per_site": {}}
    elif case == "all_none":
        report = sample_report()
        for s in report["strategies"]:
            s["aggregate_score"] = None
            for e in s["sites"].values():
                e.update(score=None, status="failed", epsilon_spent=0.0)
        report["best"] = None
        report["per_site"] = {}
    elif case == "one_site":
        report = sample_report()
        report["sites"] = ["hospital-b"]  # the one with DP
        report["per_site"] = {"hospital-b": report["per_site"]["hospital-b"]}
        for s in report["strategies"]:
            s["sites"] = {"hospital-b": s["sites"]["hospital-b"]}
    elif case == "no_per_site":
        report = sample_report()
        del report["per_site"], report["rounds"], report["recipe"], report["best_per_site"]
    else:
        report = {"search_id": 7, "sites": "nope", "strategies": [{"round": "x", "sites": None}, None],
                  "per_site": {"a": {"eval_ms": float("nan")}}, "notes": None, "best": "??"}
    page = render_html(report, [{}] if case == "empty" else ())
    for fig_id in FIGURES:
        _figure(page, fig_id)
    if case in ("empty", "no_strategies", "garbage"):
        assert page.count('class="nodata"') == len(FIGURES)
    if case == "all_none":
        assert 'no data' in _figure(page, "plot-scores") and "no data" in _figure(page, "plot-best-so-far")
        assert "<svg" in _figure(page, "plot-time")  # times are summed from the strategies
        assert "no DP: epsilon 0" in _figure(page, "plot-epsilon")
    if case in ("one_site", "no_per_site"):
        assert all("<svg" in _figure(page, f) for f in FIGURES)


def test_write_html_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    report = sample_report()
    target = tmp_path / "out" / "report.html"
    assert write_html(target, copy.deepcopy(report)) == target
    assert target.read_text(encoding="utf-8") == render_html(report)
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]
