"""Data for the LoRA evaluator: chat-formatted (instruction -> answer) token rows and a fixed batch order.

A row is the prompt (the instruction in the tokenizer's chat template, up to the assistant header) then
the answer and the end-of-sequence token. Only answer tokens (the end token included, so the model also
learns where an answer stops) carry a label; prompt and padding tokens are ``IGNORE`` (-100), which
the loss skips. A tokenizer without a chat template gets a plain ``Question: ... Answer: `` layout.

Rows longer than ``seq_len`` keep at least half of the window for the answer and drop the start of the
prompt first (the assistant header at its end is what the answer follows).

Batch order is a pure function of (rows, steps, batch size, seed): :func:`epoch_batches` walks seeded
permutations epoch after epoch; :func:`poisson_batches` draws each row independently with probability
``q`` per step, the subsampling DP-SGD's privacy accounting assumes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from site_agent.errors import EvaluationError
from site_agent.operators.base import Batch, batch_size

__all__ = ["IGNORE", "TokenRow", "collate", "encode_batch", "encode_prompt", "epoch_batches", "poisson_batches"]

IGNORE = -100


@dataclass(frozen=True)
class TokenRow:
    """One training or evaluation item: token ids and their labels (``IGNORE`` where not scored)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def answer_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def _prompt_text(tok: Any, instruction: str) -> tuple[str, bool]:
    """The prompt as text, and whether the tokenizer should add its own special tokens to it."""
    if getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": instruction}]
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)), False
    return f"Question: {instruction}\nAnswer: ", True


def _ids(tok: Any, text: str, special: bool) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"]) if text else []


def encode_prompt(tok: Any, instruction: str, seq_len: int) -> list[int]:
    """Prompt ids alone (for generation), the start dropped past ``seq_len``."""
    text, special = _prompt_text(tok, instruction)
    return _ids(tok, text, special)[-seq_len:]


def _encode_pair(tok: Any, instruction: str, answer: str, seq_len: int) -> TokenRow:
    text, special = _prompt_text(tok, instruction)
    prompt = _ids(tok, text, special)
    # Tokenized apart from the prompt so the boundary is exact; eos ends the answer turn.
    reply = _ids(tok, answer, False) + [int(tok.eos_token_id)]
    keep_answer = min(len(reply), max(1, seq_len // 2, seq_len - len(prompt)))
    reply = reply[:keep_answer]
    prompt = prompt[len(prompt) - min(len(prompt), seq_len - keep_answer):]
    return TokenRow(tuple(prompt + reply), tuple([IGNORE] * len(prompt) + reply))


def encode_batch(tok: Any, batch: Batch, seq_len: int) -> list[TokenRow]:
    """One :class:`TokenRow` per row of ``batch``; every row has at least one scored token."""
    if seq_len < 8:
        raise EvaluationError(f"seq_len must be at least 8, got {seq_len}")
    if getattr(tok, "eos_token_id", None) is None:
        raise EvaluationError("the model's tokenizer has no end-of-sequence token")
    n = batch_size(batch)
    return [_encode_pair(tok, batch["instruction"][i], batch["answer"][i], seq_len) for i in range(n)]


def collate(torch: Any, rows: Sequence[TokenRow], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded ``(input_ids, labels, attention_mask)`` long tensors of shape (rows, longest)."""
    width = max(len(r.input_ids) for r in rows)
    ids = [list(r.input_ids) + [pad_id] * (width - len(r.input_ids)) for r in rows]
    labels = [list(r.labels) + [IGNORE] * (width - len(r.labels)) for r in rows]
    mask = [[1] * len(r.input_ids) + [0] * (width - len(r.input_ids)) for r in rows]
    return (torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
            torch.tensor(mask, dtype=torch.long))


def epoch_batches(n: int, steps: int, size: int, seed: int) -> list[list[int]]:
    """``steps`` batches of ``size`` row indices: seeded permutations of ``range(n)`` laid end to end."""
    if n < 1 or steps < 0 or size < 1:
        raise EvaluationError("epoch_batches needs n >= 1, steps >= 0 and size >= 1")
    rng = random.Random(seed)
    stream: list[int] = []
    while len(stream) < steps * size:
        perm = list(range(n))
        rng.shuffle(perm)
        stream.extend(perm)
    return [stream[k * size:(k + 1) * size] for k in range(steps)]


def poisson_batches(n: int, steps: int, q: float, rng: random.Random) -> list[list[int]]:
    """``steps`` batches, each row in each independently with probability ``q`` (a batch may be empty)."""
    if n < 1 or steps < 0 or not 0.0 < q <= 1.0:
        raise EvaluationError("poisson_batches needs n >= 1, steps >= 0 and 0 < q <= 1")
    return [[i for i in range(n) if rng.random() < q] for _ in range(steps)]
