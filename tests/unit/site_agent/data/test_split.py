from collections import Counter

import pytest

from site_agent.data.benchmark.departments import DEPARTMENTS
from site_agent.data.benchmark.qa import Fact
from site_agent.data.benchmark.split import (
    NOISE_PROFILES,
    department_caps,
    make_site_specs,
    quota,
    site_ids,
    split_facts,
)
from site_agent.errors import DataError

FACTS = [Fact(f"{d}-病{s}", f"p{k}", k, ("x",), d, "disease")
         for d in DEPARTMENTS for s in range(60) for k in range(4)]
UNCAPPED = dict.fromkeys(DEPARTMENTS, 1.0)


def _tvd(a: Counter[str], b: Counter[str]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


def test_site_specs_differ_in_departments_and_noise() -> None:
    specs = make_site_specs(UNCAPPED, 3, seed=0)
    assert [s.site_id for s in specs] == ["hospital-a", "hospital-b", "hospital-c"]
    assert [s.noise_rate for s in specs] == [0.2, 0.35, 0.5]
    assert len({s.noise_profile for s in specs}) == 3
    for s in specs:
        assert abs(sum(s.department_weights.values()) - 1.0) < 1e-3
        top = sorted(s.noise_mix, key=s.noise_mix.__getitem__, reverse=True)[:len(NOISE_PROFILES[s.noise_profile])]
        assert set(top) == set(NOISE_PROFILES[s.noise_profile])
    assert make_site_specs(UNCAPPED, 3, seed=0) == specs and make_site_specs(UNCAPPED, 3, seed=1) != specs
    many = make_site_specs(UNCAPPED, 6, seed=0)
    assert len({tuple(s.noise_mix.values()) for s in many}) == 6 and many[-1].noise_rate == 0.5
    with pytest.raises(DataError, match="sites"):
        make_site_specs(UNCAPPED, 27, seed=0)


def test_weights_are_clipped_to_what_a_department_can_supply() -> None:
    caps = department_caps(FACTS, sites=3, rows_per_site=1000, eval_per_site=50)
    # 240 facts of 60 subjects per department: 0.75 * 240 / (3 * (1000 + 50 * 4)) = 0.05
    assert all(abs(c - 0.05) < 1e-9 for c in caps.values())
    for spec in make_site_specs(caps, 3, seed=0):
        assert all(w <= 0.05 + 1e-6 for w in spec.department_weights.values())
        assert abs(sum(spec.department_weights.values()) - 1.0) < 1e-3


def test_split_is_non_iid_exact_and_leak_free() -> None:
    caps = department_caps(FACTS, sites=3, rows_per_site=334, eval_per_site=20)
    specs = make_site_specs(caps, 3, seed=0)
    splits = split_facts(FACTS, specs, total_pairs=1001, eval_per_site=20, seed=0)
    assert [len(s.train) for s in splits] == [334, 334, 333] and all(len(s.eval) == 20 for s in splits)
    train_subjects = {f.subject for s in splits for f in s.train}
    eval_subjects = [f.subject for s in splits for f in s.eval]
    assert len(set(eval_subjects)) == len(eval_subjects) and not train_subjects & set(eval_subjects)
    used = [f for s in splits for f in s.train]
    assert len(set(used)) == len(used)  # no pair is handed to two sites
    mixes = [Counter(f.department for f in s.train) for s in splits]
    assert min(_tvd(a, b) for i, a in enumerate(mixes) for b in mixes[i + 1:]) > 0.2
    for s, mix in zip(splits, mixes, strict=True):  # evaluation follows the site's own department mix
        assert _tvd(Counter(f.department for f in s.eval), mix) < 0.2


def test_a_department_that_runs_out_is_topped_up_and_too_much_is_an_error() -> None:
    specs = make_site_specs(UNCAPPED, 2, seed=0)
    small = [f for f in FACTS if f.subject.endswith(("病0", "病1", "病2"))]
    splits = split_facts(small, specs, total_pairs=len(small) - 40, eval_per_site=5, seed=0)
    assert sum(len(s.train) for s in splits) == len(small) - 40
    with pytest.raises(DataError, match="too few"):
        split_facts(small, specs, total_pairs=len(small), eval_per_site=5, seed=0)


def test_quota_and_ids() -> None:
    assert quota(10, {"a": 1.0, "b": 1.0, "c": 1.0}) == {"a": 4, "b": 3, "c": 3}
    assert sum(quota(997, {"a": 0.123, "b": 0.5, "c": 0.377}).values()) == 997
    assert site_ids(2) == ["hospital-a", "hospital-b"]
