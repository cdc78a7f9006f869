
import numpy as np
import pytest

from protos.views import ParamValue
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import OperatorError
from site_agent.operators import create_operator
from site_agent.operators.context import RunContext
from site_agent.operators.selection.perplexity_filter import PerplexityFilter
from tests.unit.site_agent.operators.scoring_llm import ScoringOnlyLLM as Memo

pytestmark = pytest.mark.slow  # loads SmolLM2-135M once for the module

GARBAGE = [
    "Purple the of seven bicycle quickly under xylophone taxes, moon soup yesterday.",
    "qzx vbn plo kjh wer tyu iop asd fgh jkl zxc",
]


@pytest.fixture(scope="module")
def llm() -> Memo:
    from site_agent.llm.local_hf import LocalHF

    return Memo(LocalHF(), "perplexity_filter")


@pytest.fixture(scope="module")
def batch() -> dict[str, list[str]]:
    toy, _ = make_toy_dataset(4, seed=5, noise_rate=0.0)
    # two answers of nonsense, and an empty one: nothing to score, so no finite perplexity
    return {"instruction": toy["instruction"] + toy["instruction"][:3],
            "answer": toy["answer"] + GARBAGE + [""]}


def _bind(params: dict[str, ParamValue], llm: Memo) -> PerplexityFilter:
    op = create_operator("perplexity_filter", params).bind(RunContext(llm_factory=lambda: llm))
    assert isinstance(op, PerplexityFilter)
    return op


def test_garbage_answers_have_the_highest_perplexity_and_go_first(llm: Memo, batch: dict[str, list[str]]) -> None:
    ppl = _bind({}, llm).perplexities(batch)
    assert np.isnan(ppl[6]) and np.all(np.isfinite(ppl[:6]))
    assert ppl[4:6].min() > 5 * ppl[:4].max()
    out, stats = _bind({"upper_quantile": 0.75}, llm).run(batch)
    assert out["answer"] == batch["answer"][:4] and stats.dropped == 3 and stats.changed == 0


def test_absolute_mode_and_lower_quantile(llm: Memo, batch: dict[str, list[str]]) -> None:
    ppl = _bind({}, llm).perplexities(batch)
    bound = float(ppl[:4].max()) * 2
    out, _ = _bind({"mode": "absolute", "max_perplexity": bound}, llm).run(batch)
    assert out["answer"] == batch["answer"][:4]
    keep_all, stats = _bind({"upper_quantile": 1.0}, llm).run(batch)
    assert stats.dropped == 1 and keep_all["answer"] == batch["answer"][:6]  # only the empty answer
    _, keep = _bind({"upper_quantile": 1.0, "lower_quantile": 0.25}, llm).apply(batch)
    finite = ppl[:6]
    assert not keep[int(np.argmin(finite))]
    assert sum(keep) == int((finite >= np.quantile(finite, 0.25)).sum()) < 6
    assert llm.calls == 1  # one real scoring pass served every run


def test_needs_an_llm() -> None:
    with pytest.raises(OperatorError, match="llm"):
        create_operator("perplexity_filter", {}).bind(RunContext())
