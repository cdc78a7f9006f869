import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from site_agent.data.benchmark.build import GENERATOR_VERSION, build_benchmark, build_rows, write_benchmark
from site_agent.data.benchmark.noise import CLEAN, NOISE_TYPES
from site_agent.data.benchmark.pii import PII_PATTERNS
from site_agent.data.benchmark.split import NOISE_PROFILES
from site_agent.errors import DataError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pyCMeKG") is None, reason="pycmekg is not installed")

SITES = ("hospital-a", "hospital-b", "hospital-c")
Built = tuple[Path, dict[str, Any], dict[str, Any]]
Default = tuple[Path, dict[str, Any]]
DIRTY = re.compile(r"<[a-zA-Z/][^>]*>|&(?:[a-z]+|#\d+);|https?://|微信|QQ群|锟斤拷|[\ufffd\x80-\x9f]")


def _read(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    # One record per line whichever way a reader splits lines (mojibake holds U+0085, a line break to some).
    assert text.endswith("\n") and len(text.splitlines()) == text.count("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The default build, written, and its rows in memory (with the subjects the files leave out)."""
    sys.modules.pop("pyCMeKG.knowledgeGraph", None)
    out = tmp_path_factory.mktemp("bench")
    manifest, rows = build_rows()
    write_benchmark(out, manifest, rows)
    # The graph was read by the restricted unpickler, never by the package's own loader.
    assert "pyCMeKG.knowledgeGraph" not in sys.modules
    return out, manifest.to_dict(), rows


@pytest.fixture(scope="module")
def default_build(built: Built) -> Default:
    return built[0], built[1]


def test_default_build_layout_and_size(default_build: Default) -> None:
    out, manifest = default_build
    assert sorted(p.name for p in out.iterdir()) == ["hospital-a", "hospital-b", "hospital-c", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == json.loads(json.dumps(manifest))
    assert manifest["generator_version"] == GENERATOR_VERSION and manifest["seed"] == 0
    total = 0
    for site in manifest["sites"]:
        train, evals = _read(out / site["site_id"] / "train.jsonl"), _read(out / site["site_id"] / "eval.jsonl")
        assert len(train) == site["train_rows"] and len(evals) == site["eval_rows"] == 200
        assert all(set(r) == {"instruction", "answer", "label", "department"} for r in train)
        assert all(set(r) == {"instruction", "answer"} for r in evals)
        assert Counter(r["label"] for r in train) == site["labels"]
        assert Counter(r["department"] for r in train) == site["departments"]
        total += len(train) + len(evals)
    assert total >= 12_000 and sum(s["train_rows"] for s in manifest["sites"]) == 12_000
    assert not list(out.rglob("*.tmp"))


def test_noise_types_rates_and_mixes(default_build: Default) -> None:
    _, manifest = default_build
    everywhere: Counter[str] = Counter()
    dominant = []
    for site, rate in zip(manifest["sites"], (0.20, 0.35, 0.50), strict=True):
        labels = Counter(site["labels"])
        everywhere += labels
        assert set(labels) == {CLEAN, *NOISE_TYPES}  # every type at every site, each with its label
        assert sum(v for k, v in labels.items() if k != CLEAN) == round(rate * site["train_rows"])
        top = {k for k, _ in (labels - Counter({CLEAN: labels[CLEAN]})).most_common(3)}
        assert top <= set(NOISE_PROFILES[site["noise_profile"]])
        dominant.append(frozenset(top))
    assert len(set(dominant)) == 3 and all(everywhere[t] >= 50 for t in NOISE_TYPES)


def test_departments_are_non_iid(default_build: Default) -> None:
    _, manifest = default_build
    mixes = [Counter(s["departments"]) for s in manifest["sites"]]

    def tvd(a: Counter[str], b: Counter[str]) -> float:
        return 0.5 * sum(abs(a[k] / a.total() - b[k] / b.total()) for k in set(a) | set(b))

    assert min(tvd(a, b) for i, a in enumerate(mixes) for b in mixes[i + 1:]) > 0.2
    for site, mix in zip(manifest["sites"], mixes, strict=True):  # evaluation follows the site's own mix
        assert tvd(Counter(site["eval_departments"]), mix) < 0.15


def test_eval_sets_are_clean_and_share_no_subject_with_training(built: Built) -> None:
    out, _, rows = built
    train_subjects = {r.subject for train, _ in rows.values() for r in train}
    train_questions = {r["instruction"] for s in SITES for r in _read(out / s / "train.jsonl")}
    for site in SITES:
        train, evals = rows[site]
        on_disk = _read(out / site / "eval.jsonl")
        assert [(p.instruction, p.answer) for p in evals] == [(r["instruction"], r["answer"]) for r in on_disk]
        assert [r.instruction for r in train] == [r["instruction"] for r in _read(out / site / "train.jsonl")]
        assert not {p.subject for p in evals} & train_subjects
        for r in on_disk:
            text = r["instruction"] + r["answer"]
            assert not any(p.search(text) for p in PII_PATTERNS.values()) and not DIRTY.search(text)
            assert r["instruction"] not in train_questions and len(r["answer"]) > 4


def test_manifest_holds_counts_not_text(default_build: Default) -> None:
    out, manifest = default_build
    text = (out / "manifest.json").read_text(encoding="utf-8")
    samples = _read(out / "hospital-b" / "train.jsonl")[:300] + _read(out / "hospital-b" / "eval.jsonl")
    assert not any(len(v) > 3 and v in text for r in samples for k, v in r.items() if k in ("instruction", "answer"))
    assert set(manifest) == {"generator_version", "seed", "total_pairs", "eval_per_site", "noise_types", "source",
                             "sites"}
    assert manifest["source"]["candidate_pairs"] > 100_000 and manifest["source"]["subjects"] > 20_000


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    small = {"total_pairs": 600, "eval_per_site": 10}
    build_benchmark(tmp_path / "a", seed=7, **small)
    build_benchmark(tmp_path / "b", seed=7, **small)
    build_benchmark(tmp_path / "c", seed=8, **small)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b and len(a) == 7
    assert all(a[k] != c[k] for k in a)
    build_benchmark(tmp_path / "a", seed=7, **small)  # rebuilding in place gives the same files again
    assert files(tmp_path / "a") == a


def test_more_sites_and_bad_arguments(tmp_path: Path) -> None:
    manifest = build_benchmark(tmp_path / "five", sites=5, total_pairs=1000, eval_per_site=10)
    assert [s.site_id for s in manifest.sites][-1] == "hospital-e" and {s.train_rows for s in manifest.sites} == {200}
    with pytest.raises(DataError, match="sites"):
        build_rows(sites=0)
    with pytest.raises(DataError, match="at least 10 per site"):
        build_rows(total_pairs=20)
    with pytest.raises(DataError, match="evaluation pairs per site"):
        build_rows(eval_per_site=5000)
    with pytest.raises(DataError, match="too few"):
        build_rows(total_pairs=500_000)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="could not be written"):
        build_benchmark(tmp_path / "file", total_pairs=100, eval_per_site=5)


def test_undamaged_build_is_the_damaged_build_before_its_noise() -> None:
    """``damage=False``: the same facts in the same order, none damaged; the damaged build's clean rows are the very
    same rows, and its damaged rows differ from theirs (the ceiling a repair could reach)."""
    small = {"sites": 3, "total_pairs": 600, "eval_per_site": 20}
    manifest, damaged = build_rows(**small)
    plain_manifest, plain = build_rows(**small, damage=False)
    assert [s.noise_rate for s in plain_manifest.sites] == [0.0, 0.0, 0.0]
    for site in manifest.sites:
        rows, evals = damaged[site.site_id]
        clean_rows, clean_evals = plain[site.site_id]
        assert clean_evals == evals and len(clean_rows) == len(rows) == site.train_rows
        assert {r.label for r in clean_rows} == {"clean"}
        changed = 0
        for r, c in zip(rows, clean_rows, strict=True):
            if r.label == "clean":
                assert r == c
            else:
                changed += (r.instruction, r.answer) != (c.instruction, c.answer)
        assert changed >= 0.9 * sum(r.label != "clean" for r in rows) > 0
