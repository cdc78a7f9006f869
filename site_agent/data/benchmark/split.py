"""A non-IID split of the facts into hospital sites, with a clean held-out evaluation set per site.

Sites differ the way real hospitals do:

- **department mix**: each site's weights over departments are a draw from a symmetric Dirichlet with a
  small ``alpha`` (0.3), so one site is mostly paediatrics and pharmacy, another cardiology and TCM;
  a weight is clipped to what its department can supply (the excess goes to the site's other
  departments in proportion), so that no department runs dry and evaluation and training mixes agree;
- **noise**: each site has its own overall rate (20 % .. 50 % across sites) and a dominant noise profile
  (a web-forum scrape: markup, ads, re-posts; an EHR export: identifiers, cut-off and mis-encoded
  text; crowd-sourced answers: mismatched, looping and one-word answers), other types at a low rate.

Evaluation subjects are drawn first, from each site's own department mix, and reserved: no training row
of any site is about an evaluation subject, so no answer leaks from training into evaluation. Training
rows are then drawn per department quota from the remaining facts, without replacement across sites;
a department that runs out is topped up from the site's next-heaviest departments.
"""

from __future__ import annotations

import random
import string
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from site_agent.data.benchmark.noise import NOISE_TYPES
from site_agent.data.benchmark.qa import Fact
from site_agent.errors import DataError

__all__ = ["MAX_SITES", "NOISE_PROFILES", "SiteSpec", "SiteSplit", "department_caps", "make_site_specs", "quota",
           "site_ids", "split_facts"]

MAX_SITES = len(string.ascii_lowercase)
DOMINANT_WEIGHT = 6.0
NOISE_PROFILES: dict[str, tuple[str, ...]] = {
    "forum_scrape": ("html_residue", "advertising_spam", "near_duplicate", "exact_duplicate"),
    "ehr_export": ("pii", "truncated_answer", "garbled_encoding"),
    "crowd_answers": ("qa_mismatch", "repetition_loop", "empty_or_one_word_answer"),
}
_RATE_LOW, _RATE_HIGH = 0.20, 0.50
T = TypeVar("T")


@dataclass(frozen=True)
class SiteSpec:
    site_id: str
    department_weights: dict[str, float]
    noise_profile: str
    noise_rate: float
    noise_mix: dict[str, float]


@dataclass(frozen=True)
class SiteSplit:
    spec: SiteSpec
    train: list[Fact]
    eval: list[Fact]


def site_ids(sites: int) -> list[str]:
    return [f"hospital-{string.ascii_lowercase[k]}" for k in range(sites)]


def quota(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by ``weights`` exactly (largest remainder, ties by name)."""
    s = sum(weights.values())
    exact = {k: total * w / s for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), k))[:total - sum(out.values())]:
        out[k] += 1
    return out


def department_caps(facts: Sequence[Fact], *, sites: int, rows_per_site: int, eval_per_site: int,
                    headroom: float = 0.75) -> dict[str, float]:
    """The largest weight each department can take at every site at once without running out of facts.

    An evaluation pair reserves its whole subject (all of its facts), hence the facts-per-subject factor.
    """
    facts_in: Counter[str] = Counter(f.department for f in facts)
    subjects_in: Counter[str] = Counter(d for _, d in {(f.subject, f.department) for f in facts})
    caps = {}
    for d, n in facts_in.items():
        demand = sites * (rows_per_site + eval_per_site * n / subjects_in[d])
        caps[d] = headroom * n / demand if demand else 1.0
    return caps


def _water_fill(weights: dict[str, float], caps: Mapping[str, float]) -> dict[str, float]:
    """Clip each weight to its cap and hand the excess to the others in proportion, until all fit."""
    w, fixed = dict(weights), set()
    while over := [d for d in w if d not in fixed and w[d] > caps[d]]:
        excess = sum(w[d] - caps[d] for d in over)
        for d in over:
            w[d] = caps[d]
            fixed.add(d)
        free = [d for d in w if d not in fixed]
        total = sum(w[d] for d in free)
        if not free:
            break  # the caps cannot hold the whole mix: the top-up in _take covers the rest
        for d in free:
            w[d] += excess * (w[d] / total if total > 0 else 1 / len(free))
    return w


def make_site_specs(caps: Mapping[str, float], sites: int, seed: int, alpha: float = 0.3) -> list[SiteSpec]:
    """One spec per site: department weights (a Dirichlet(``alpha``) draw over the departments of
    ``caps``, clipped to each department's cap), a noise profile, rate and mix."""
    if not 1 <= sites <= MAX_SITES:
        raise DataError(f"number of sites must be within [1, {MAX_SITES}], got {sites}")
    rng = random.Random(f"sites:{seed}")
    names = sorted(d for d in caps if caps[d] > 0)
    profiles = list(NOISE_PROFILES)
    specs = []
    for k, site_id in enumerate(site_ids(sites)):
        draws = [rng.gammavariate(alpha, 1.0) for _ in names]
        total = sum(draws)
        raw = {d: (g / total if total > 0 else 1 / len(names)) for d, g in zip(names, draws, strict=True)}
        weights = {d: round(w, 6) for d, w in _water_fill(raw, caps).items()}
        profile = profiles[k % len(profiles)]
        rate = _RATE_LOW + (_RATE_HIGH - _RATE_LOW) * k / (sites - 1) if sites > 1 else (_RATE_LOW + _RATE_HIGH) / 2
        # The jitter keeps sites that share a profile (more than three sites) from sharing a mix.
        mix = {t: round((DOMINANT_WEIGHT if t in NOISE_PROFILES[profile] else 1.0) * rng.uniform(0.75, 1.25), 3)
               for t in NOISE_TYPES}
        specs.append(SiteSpec(site_id, weights, profile, round(rate, 4), mix))
    return specs


def _take(pools: dict[str, list[T]], wanted: Mapping[str, int], order: list[str]) -> list[T]:
    """Pop ``wanted[d]`` items from each pool; a shortfall moves to the next departments in ``order``."""
    out: list[T] = []
    short = 0
    for d in order:
        n = min(wanted.get(d, 0), len(pools[d]))
        short += wanted.get(d, 0) - n
        out.extend(pools[d][len(pools[d]) - n:])
        del pools[d][len(pools[d]) - n:]
    for d in order:
        if short == 0:
            break
        n = min(short, len(pools[d]))
        out.extend(pools[d][len(pools[d]) - n:])
        del pools[d][len(pools[d]) - n:]
        short -= n
    if short:
        raise DataError(f"the knowledge graph has too few question/answer pairs for this build "
                        f"({short} missing): ask for fewer pairs or sites")
    return out


def _heaviest_first(departments: Sequence[str], weights: Mapping[str, float]) -> list[str]:
    return sorted(departments, key=lambda d: (-weights.get(d, 0.0), d))


def split_facts(facts: Sequence[Fact], specs: Sequence[SiteSpec], *, total_pairs: int,
                eval_per_site: int, seed: int) -> list[SiteSplit]:
    """Evaluation sets first (one fact per reserved subject), then training rows, per site."""
    rng = random.Random(f"split:{seed}")
    by_subject: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_subject[f.subject].append(f)
    subjects: dict[str, list[str]] = defaultdict(list)
    for s, fs in by_subject.items():
        subjects[fs[0].department].append(s)
    departments = sorted({d for spec in specs for d in spec.department_weights} | set(subjects))
    for d in departments:
        rng.shuffle(subjects[d])
    orders = [_heaviest_first(departments, spec.department_weights) for spec in specs]

    evals: list[list[Fact]] = []
    for spec, order in zip(specs, orders, strict=True):
        picked = _take(subjects, quota(eval_per_site, spec.department_weights), order)
        evals.append([rng.choice(by_subject[s]) for s in picked])
    reserved = {f.subject for fs in evals for f in fs}

    pools: dict[str, list[Fact]] = {d: [] for d in departments}
    for f in facts:
        if f.subject not in reserved:
            pools[f.department].append(f)
    for d in departments:
        rng.shuffle(pools[d])
    sizes = quota(total_pairs, {spec.site_id: 1.0 for spec in specs})
    out = []
    for spec, order, eval_facts in zip(specs, orders, evals, strict=True):
        train = _take(pools, quota(sizes[spec.site_id], spec.department_weights), order)
        rng.shuffle(train)
        out.append(SiteSplit(spec, train, eval_facts))
    return out
