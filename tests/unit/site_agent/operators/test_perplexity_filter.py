from collections.abc import Sequence

import numpy as np
import pytest

from protos.views import ParamValue
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import OperatorError
from site_agent.llm.base import LLMBackend
from site_agent.operators import create_operator
from site_agent.operators.context import RunContext
from site_agent.operators.selection.perplexity_filter import PerplexityFilter

pytestmark = pytest.mark.slow  # loads SmolLM2-135M once for the module

GARBAGE = [
    "Purple the of seven bicycle quickly under xylophone taxes, moon soup yesterday.",
    "qzx vbn plo kjh wer tyu iop asd fgh jkl zxc",
]


class Memo:
    """The real backend, with each (prompt, completion) scored once: the tests rerun the operator with
    other parameters on the same rows, and the model is what is slow."""

    def __init__(self, llm: LLMBackend) -> None:
        self.inner, self.name, self.calls = llm, llm.name, 0
        self._seen: dict[tuple[str, str], float] = {}

    def chat(self, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
        raise AssertionError("perplexity_filter must not generate")

    def completion_loss(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        todo = [k for k in dict.fromkeys(zip(prompts, completions, strict=True)) if k not in self._seen]
        if todo:
            self.calls += 1
            losses = self.inner.completion_loss([p for p, _ in todo], [c for _, c in todo])
            self._seen.update(zip(todo, losses, strict=True))
        return [self._seen[k] for k in zip(prompts, completions, strict=True)]


@pytest.fixture(scope="module")
def llm() -> Memo:
    from site_agent.llm.local_hf import LocalHF

    return Memo(LocalHF())


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
