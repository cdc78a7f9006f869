"""Scores of the LoRA evaluator: processed-data model vs raw-data (baseline) model, higher is better.

- ``neg_token_loss``     mean over held-out items of each item's mean answer-token NLL, negated:
                         ``score = mean(baseline losses) - mean(processed losses)``.
- ``pairwise_win_rate``  share of held-out items whose reference answer the processed-data model gives a
                         lower loss than the baseline model (an exact tie counts half);
                         ``score = win_rate - 0.5``, so 0 means no difference and the range is [-0.5, 0.5].
- ``judge_win_rate``     both models answer every held-out question (greedy); a site-local judge LLM
                         compares the two answers twice, once in each position, so position bias
                         cancels; a win is 1, a tie (or an unreadable verdict) 0.5, per comparison;
                         ``score = win_rate - 0.5`` as above.

The judge is an OpenAI-compatible endpoint on the site (:class:`~site_agent.llm.openai_compat.OpenAICompat`
refuses a non-local host); its prompts hold held-out questions and answers, so it must stay inside.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protos.config import first_error
from site_agent.errors import EvaluationError

__all__ = ["JUDGE_SYSTEM", "JudgeConfig", "JudgeLike", "judge_prompt", "judge_win_rate", "make_judge",
           "neg_token_loss_score", "pairwise_win_rate", "parse_judge", "parse_verdict"]

JUDGE_SYSTEM = ("You compare two answers to a medical question. Judge correctness first, then completeness "
                "and clarity. Reply with one letter only: A if answer A is better, B if answer B is better, "
                "T if they are equally good.")
_VERDICT = re.compile(r"^\W*(tie|a|b|t)\b", re.IGNORECASE)


class JudgeConfig(BaseModel):
    """A site-local OpenAI-compatible judge endpoint, and how long the compared answers may be."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    model: str = Field(min_length=1)
    api_key: str | None = None
    timeout_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    max_batch: int = Field(default=8, ge=1, le=256)
    allow_non_local: bool = False
    answer_tokens: int = Field(default=64, ge=1, le=4096)


class JudgeLike(Protocol):
    def chat(self, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0) -> list[str]: ...


def parse_judge(options: Mapping[str, Any] | JudgeConfig | None) -> JudgeConfig | None:
    if options is None or isinstance(options, JudgeConfig):
        return options
    try:
        return JudgeConfig.model_validate(dict(options))
    except ValidationError as e:
        _, why, where = first_error(e)
        raise EvaluationError(f"judge option '{where or 'judge'}': {why}") from None


def make_judge(cfg: JudgeConfig) -> Any:
    from site_agent.llm.errors import LLMConfigError
    from site_agent.llm.openai_compat import OpenAICompat

    try:
        return OpenAICompat(cfg.base_url, cfg.model, api_key=cfg.api_key, timeout_s=cfg.timeout_s,
                            max_batch=cfg.max_batch, allow_non_local=cfg.allow_non_local)
    except LLMConfigError as e:
        raise EvaluationError(f"judge: {e}") from None


def _mean(values: Sequence[float]) -> float:
    if not values or not all(math.isfinite(v) for v in values):
        raise EvaluationError(f"cannot average {len(values)} losses (empty or not finite)")
    return sum(values) / len(values)


def neg_token_loss_score(processed: Sequence[float], baseline: Sequence[float]) -> float:
    return _mean(baseline) - _mean(processed)


def pairwise_win_rate(processed: Sequence[float], baseline: Sequence[float]) -> float:
    if len(processed) != len(baseline) or not processed:
        raise EvaluationError(f"pairwise win rate needs equal, non-empty loss lists; got {len(processed)} and "
                              f"{len(baseline)}")
    for values in (processed, baseline):
        _mean(values)  # finite and non-empty
    points = sum(1.0 if p < b else 0.5 if p == b else 0.0 for p, b in zip(processed, baseline, strict=True))
    return points / len(processed)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return f"Question:\n{question}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n\nWhich answer is better?"


def parse_verdict(reply: str) -> str | None:
    """``"A"``, ``"B"``, ``"T"`` (tie), or None for a reply that names none of them first."""
    m = _VERDICT.match(reply)
    if m is None:
        return None
    word = m.group(1).upper()
    return "T" if word == "TIE" else word


def judge_win_rate(judge: JudgeLike, questions: Sequence[str], processed: Sequence[str],
                   baseline: Sequence[str], *, seed: int = 0) -> tuple[float, int]:
    """The processed model's win rate over both orders, and how many verdicts were unreadable."""
    n = len(questions)
    if not n or len(processed) != n or len(baseline) != n:
        raise EvaluationError(f"judge needs one answer per question from each model; got {n} questions, "
                              f"{len(processed)} and {len(baseline)} answers")
    prompts = [judge_prompt(q, p, b) for q, p, b in zip(questions, processed, baseline, strict=True)]
    prompts += [judge_prompt(q, b, p) for q, p, b in zip(questions, processed, baseline, strict=True)]
    replies = judge.chat(prompts, system=JUDGE_SYSTEM, max_new_tokens=4, temperature=0.0, seed=seed)
    if len(replies) != len(prompts):
        raise EvaluationError(f"judge returned {len(replies)} verdicts for {len(prompts)} comparisons")
    points, unreadable = 0.0, 0
    for k, reply in enumerate(replies):
        verdict = parse_verdict(reply)
        unreadable += verdict is None
        processed_slot = "A" if k < n else "B"
        points += 1.0 if verdict == processed_slot else 0.5 if verdict in ("T", None) else 0.0
    return points / len(prompts), unreadable
