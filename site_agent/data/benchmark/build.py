"""Build the federated medical QA benchmark: per-site noisy training sets, clean evaluation sets, a manifest.

Layout written under ``out_dir``::

    hospital-a/train.jsonl   instruction, answer, label ("clean" or a noise type), department
    hospital-a/eval.jsonl    instruction, answer (clean, subjects never seen in any site's training)
    ...
    manifest.json            seed, generator version, counts per site per label and department (no text)

Every file is written to a temporary name in its folder and renamed into place, and the manifest goes
last, so a folder with a manifest holds a complete build. The graph's facts are extracted once per
process (about 4 s); a default build then takes a second or two more.
"""

from __future__ import annotations

import functools
import json
import os
import random
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from site_agent.data.benchmark.cmekg import LoadStats, load_cmekg_with_stats
from site_agent.data.benchmark.noise import NOISE_TYPES, LabelledRow, inject_noise
from site_agent.data.benchmark.qa import Fact, QAPair, extract_facts, render_fact
from site_agent.data.benchmark.split import MAX_SITES, department_caps, make_site_specs, split_facts
from site_agent.errors import DataError

__all__ = ["GENERATOR_VERSION", "BenchmarkManifest", "SiteManifest", "build_benchmark", "build_rows", "write_benchmark"]

GENERATOR_VERSION = "cmekg-qa-bench/1"
MAX_EVAL_PER_SITE = 2000


@dataclass(frozen=True)
class SiteManifest:
    site_id: str
    noise_profile: str
    noise_rate: float  # the target share of damaged training rows
    train_rows: int
    eval_rows: int
    labels: dict[str, int]
    departments: dict[str, int]
    eval_departments: dict[str, int]


@dataclass(frozen=True)
class BenchmarkManifest:
    generator_version: str
    seed: int
    total_pairs: int
    eval_per_site: int
    noise_types: tuple[str, ...]
    source: dict[str, int]
    sites: tuple[SiteManifest, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def _facts() -> tuple[tuple[Fact, ...], LoadStats]:
    graph, stats = load_cmekg_with_stats()
    return tuple(extract_facts(graph)), stats


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _check(sites: int, total_pairs: int, eval_per_site: int) -> None:
    if not 1 <= sites <= MAX_SITES:
        raise DataError(f"sites must be within [1, {MAX_SITES}], got {sites}")
    if total_pairs < 10 * sites:
        raise DataError(f"total pairs must be at least 10 per site ({10 * sites}), got {total_pairs}")
    if not 0 <= eval_per_site <= MAX_EVAL_PER_SITE:
        raise DataError(f"evaluation pairs per site must be within [0, {MAX_EVAL_PER_SITE}], got {eval_per_site}")


def build_rows(*, sites: int = 3, seed: int = 0, total_pairs: int = 12000, eval_per_site: int = 200,
               damage: bool = True) -> tuple[BenchmarkManifest, dict[str, tuple[list[LabelledRow], list[QAPair]]]]:
    """The benchmark in memory: the manifest and, per site id, (training rows, evaluation pairs).

    ``damage=False`` leaves out the noise injection: every site's training rows as generated, all labelled clean,
    in the same order as the damaged build's (row ``i`` is the fact the damaged build's row ``i`` was made from).
    Benchmarks train on it as a ceiling: what a strategy that repaired every damaged row perfectly would give."""
    _check(sites, total_pairs, eval_per_site)
    facts, stats = _facts()
    if total_pairs + sites * eval_per_site > len(facts):
        raise DataError(f"the knowledge graph has too few question/answer pairs for this build "
                        f"({len(facts)} available): ask for fewer pairs or sites")
    caps = department_caps(facts, sites=sites, rows_per_site=-(-total_pairs // sites), eval_per_site=eval_per_site)
    specs = make_site_specs(caps, sites, seed)
    splits = split_facts(facts, specs, total_pairs=total_pairs, eval_per_site=eval_per_site, seed=seed)
    rows: dict[str, tuple[list[LabelledRow], list[QAPair]]] = {}
    site_manifests = []
    for split in splits:
        spec = split.spec
        rng = random.Random(f"phrase:{seed}:{spec.site_id}")
        train_pairs = [render_fact(f, rng) for f in split.train]
        eval_pairs = [render_fact(f, rng) for f in split.eval]
        train = inject_noise(train_pairs, rate=spec.noise_rate if damage else 0.0, mix=spec.noise_mix,
                             seed=f"{seed}:{spec.site_id}")
        rows[spec.site_id] = (train, eval_pairs)
        site_manifests.append(SiteManifest(
            spec.site_id, spec.noise_profile, spec.noise_rate if damage else 0.0, len(train), len(eval_pairs),
            _counts(r.label for r in train), _counts(r.department for r in train),
            _counts(p.department for p in eval_pairs)))
    source = {"subjects": stats.subjects, "skipped_subjects": stats.skipped_subjects,
              "skipped_predicates": stats.skipped_predicates, "skipped_objects": stats.skipped_objects,
              "candidate_pairs": len(facts)}
    manifest = BenchmarkManifest(GENERATOR_VERSION, seed, total_pairs, eval_per_site, NOISE_TYPES, source,
                                 tuple(site_manifests))
    return manifest, rows


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    # A unique name in the same folder (so the rename is atomic), created with "x" so the umask applies.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Line breaks JSON leaves unescaped that str.splitlines() (and some JSONL readers) still split on; mojibake
# produces U+0085. Escaping them keeps one record per line for every reader.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _jsonl(records: Iterable[dict[str, str]]) -> Iterable[str]:
    return (json.dumps(r, ensure_ascii=False).translate(_LINE_BREAKS) + "\n" for r in records)


def write_benchmark(out_dir: Path, manifest: BenchmarkManifest,
                    rows: dict[str, tuple[list[LabelledRow], list[QAPair]]]) -> None:
    """Write what :func:`build_rows` returned under ``out_dir``, each file atomically, the manifest last."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "manifest.json").unlink(missing_ok=True)  # no stale manifest beside a half-written build
        for site_id, (train, eval_pairs) in rows.items():
            site_dir = out_dir / site_id
            site_dir.mkdir(exist_ok=True)
            _write_atomic(site_dir / "train.jsonl", _jsonl(
                {"instruction": r.instruction, "answer": r.answer, "label": r.label, "department": r.department}
                for r in train))
            _write_atomic(site_dir / "eval.jsonl", _jsonl(
                {"instruction": p.instruction, "answer": p.answer} for p in eval_pairs))
        _write_atomic(out_dir / "manifest.json",
                      [json.dumps(manifest.to_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"])
    except OSError as e:
        raise DataError(f"benchmark could not be written to the output folder ({type(e).__name__})") from None


def build_benchmark(out_dir: Path, *, sites: int = 3, seed: int = 0, total_pairs: int = 12000,
                    eval_per_site: int = 200) -> BenchmarkManifest:
    """Write the benchmark under ``out_dir`` (see the module docstring) and return its manifest."""
    manifest, rows = build_rows(sites=sites, seed=seed, total_pairs=total_pairs, eval_per_site=eval_per_site)
    write_benchmark(out_dir, manifest, rows)
    return manifest
