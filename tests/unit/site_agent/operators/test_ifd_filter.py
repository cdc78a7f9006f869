
import numpy as np
import pytest

from protos.views import ParamValue
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import OperatorError
from site_agent.operators import create_operator
from site_agent.operators.context import RunContext
from site_agent.operators.selection.ifd_filter import IFDFilter
from tests.unit.site_agent.operators.scoring_llm import ScoringOnlyLLM as Memo

pytestmark = pytest.mark.slow  # loads SmolLM2-135M once for the module

MATCHED = 4
OFF_TOPIC = "The capital of France is Paris, and the Eiffel Tower was completed in 1889."


@pytest.fixture(scope="module")
def llm() -> Memo:
    from site_agent.llm.local_hf import LocalHF

    return Memo(LocalHF(), "ifd_filter")


@pytest.fixture(scope="module")
def batch() -> dict[str, list[str]]:
    toy, _ = make_toy_dataset(12, seed=5, noise_rate=0.0)
    q, a = toy["instruction"], toy["answer"]
    # four intact pairs, two questions joined to the answer of another condition, one to an off-topic record
    return {"instruction": q[:MATCHED] + [q[9], q[10], q[8]], "answer": a[:MATCHED] + [a[0], a[11], OFF_TOPIC]}


def _bind(params: dict[str, ParamValue], llm: Memo) -> IFDFilter:
    op = create_operator("ifd_filter", params).bind(RunContext(llm_factory=lambda: llm))
    assert isinstance(op, IFDFilter)
    return op


def test_the_instruction_helps_matched_answers_only(llm: Memo, batch: dict[str, list[str]]) -> None:
    ifd = _bind({}, llm).scores(batch)
    assert np.all(np.isfinite(ifd)) and np.all(ifd > 0)
    # a medical instruction still helps a 135M model to predict another condition's answer a little (the
    # shared vocabulary), but makes this off-topic record harder to predict than no instruction at all
    assert ifd[:MATCHED].max() < 0.8 < ifd[MATCHED:].min() and ifd[-1] > 1.0
    out, stats = _bind({}, llm).run(batch)  # drops IFD >= 1: the instruction does not help
    assert out["answer"] == batch["answer"][:-1] and stats.dropped == 1 and stats.changed == 0
    out, stats = _bind({"max_ifd": 0.8}, llm).run(batch)
    assert out == {c: v[:MATCHED] for c, v in batch.items()}


def test_band_and_top_fraction(llm: Memo, batch: dict[str, list[str]]) -> None:
    ifd = _bind({}, llm).scores(batch)
    _, keep = _bind({"max_ifd": 10.0, "top_fraction": 0.3}, llm).apply(batch)
    k = round(0.3 * len(ifd))
    assert sum(keep) == k and sorted(np.flatnonzero(keep)) == sorted(np.argsort(-ifd)[:k])
    # within the band, the highest-IFD rows are the informative ones the paper keeps
    _, keep = _bind({"max_ifd": 0.8, "top_fraction": 0.3}, llm).apply(batch)
    assert sum(keep) == k and all(keep[i] == (ifd[i] >= np.sort(ifd[:MATCHED])[-k]) for i in range(MATCHED))
    floor = float(np.sort(ifd)[2])
    _, keep = _bind({"max_ifd": 10.0, "min_ifd": floor}, llm).apply(batch)
    assert keep == [bool(x >= floor) for x in ifd] and sum(keep) == len(ifd) - 2
    assert llm.calls == 2  # conditioned and unconditioned losses, scored once


def test_empty_answer_has_no_ifd_and_is_dropped(llm: Memo, batch: dict[str, list[str]]) -> None:
    rows = {"instruction": batch["instruction"][:1] * 2, "answer": [batch["answer"][0], ""]}
    _, keep = _bind({}, llm).apply(rows)
    assert keep == [True, False]


def test_needs_an_llm() -> None:
    with pytest.raises(OperatorError, match="llm"):
        create_operator("ifd_filter", {}).bind(RunContext())
