"""A local Hugging Face causal LM on the site's own machine (default: the bundled SmolLM2-135M-Instruct).

Only local files are read (``local_files_only``), only safetensors weights, and no code from the model
folder is run (``trust_remote_code=False``): a model folder is data, not a program. The model loads on
first use, so a strategy without LLM operators never pays for it. One lock serialises calls: the executor
runs one task at a time, and torch already uses every core for one batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from site_agent.llm.errors import LLMConfigError, LLMError

__all__ = ["DEFAULT_LOCAL_NAME", "LocalHF"]

DEFAULT_LOCAL_NAME = "smollm2-135m-instruct-local"
# Tokens of logits held at once while scoring (x vocab x 4 bytes: ~200 MB for a 49k vocabulary).
_LOSS_TOKEN_BUDGET = 1024


def _folder_name(folder: Path) -> str:
    """``<folder>-local-<hash>``: two folders with the same name but other weights get other cache keys."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-") or "model"
    return f"{base}-local-{digest.hexdigest()[:8]}"


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise LLMConfigError(f"local LLM folder '{folder.name}' has no config.json")
    if not any(folder.glob("*.safetensors")):
        raise LLMConfigError(f"local LLM folder '{folder.name}' has no .safetensors weights "
                             "(only safetensors are loaded)")


class LocalHF:
    """:class:`~site_agent.llm.base.LLMBackend` over a local HF model folder, through transformers."""

    def __init__(self, folder: Path | None = None, *, name: str | None = None, max_batch: int = 8,
                 dtype: Literal["float32", "bfloat16"] = "float32", device: Literal["cpu", "cuda"] = "cpu",
                 max_input_tokens: int = 1024, threads: int | None = None) -> None:
        if max_batch < 1 or max_input_tokens < 16 or (threads is not None and threads < 1):
            raise LLMConfigError("local LLM: max_batch and threads must be >= 1, max_input_tokens >= 16")
        if folder is not None:
            _check_folder(folder)
        self._folder = folder
        self.name = name or (_folder_name(folder) if folder is not None else DEFAULT_LOCAL_NAME)
        self.max_batch = max_batch
        self.max_input_tokens = max_input_tokens
        self._dtype, self._device, self._threads = dtype, device, threads
        self._lock = threading.RLock()
        self._tok: Any = None
        self._model: Any = None

    # -- loading -------------------------------------------------------------------------------------

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                self._tok, self._model = self._load_model()
            return self._tok, self._model

    def _load_model(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging_module

        hf_logging: Any = hf_logging_module

        if self._folder is None:
            from protos.bundled_models import smollm2_folder

            self._folder = smollm2_folder()
            _check_folder(self._folder)
        if self._device == "cuda" and not torch.cuda.is_available():
            raise LLMConfigError("local LLM: device 'cuda' requested but no CUDA device is available")
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a weights progress bar per task is noise in the site log
        try:
            tok = AutoTokenizer.from_pretrained(self._folder, local_files_only=True, trust_remote_code=False)
            model: Any = AutoModelForCausalLM.from_pretrained(
                self._folder, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                dtype=getattr(torch, self._dtype))
        except Exception as e:
            raise LLMError(f"cannot load the local LLM from '{self._folder.name}' ({type(e).__name__})") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        model.to(self._device).eval()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return tok, model

    @contextlib.contextmanager
    def _torch_threads(self, torch: Any) -> Iterator[None]:
        # torch's thread count is process-wide: set for the call (under our lock) and restored after. On a
        # busy small machine one thread is many times faster than two fighting for the cores.
        if self._threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # -- formatting ----------------------------------------------------------------------------------

    def _clip(self, tok: Any, text: str) -> str:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_input_tokens else str(tok.decode(ids[:self.max_input_tokens]))

    def _prompt_ids(self, tok: Any, prompt: str, system: str | None) -> list[int]:
        prompt = self._clip(tok, prompt)
        if getattr(tok, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        # A base model without a chat template: plain text, the system line first.
        text = f"{system}\n\n{prompt}\n" if system else f"{prompt}\n"
        return list(tok(text, add_special_tokens=True)["input_ids"])

    @staticmethod
    def _left_pad(torch: Any, rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return ids, mask

    @staticmethod
    def _stop_ids(tok: Any, model: Any) -> list[int]:
        # A chat model ends its turn with the tokenizer's eos (<|im_end|>) even when the model config
        # names another end-of-text token: stop on either.
        configured = model.generation_config.eos_token_id
        ids = list(configured) if isinstance(configured, list) else [configured]
        return sorted({i for i in [*ids, tok.eos_token_id] if i is not None})

    # -- LLMBackend ----------------------------------------------------------------------------------

    def chat(self, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 128,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
        if max_new_tokens < 1 or not temperature >= 0.0:
            raise LLMError("chat: max_new_tokens must be >= 1 and temperature >= 0")
        if not prompts:
            return []
        import torch
        from transformers import GenerationConfig as _GenerationConfig

        generation_config: Any = _GenerationConfig

        with self._lock, self._torch_threads(torch):
            tok, model = self._load()
            encoded = [self._prompt_ids(tok, p, system) for p in prompts]
            # Similar lengths share a batch: less padding, and the grouping depends on the inputs only.
            order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
            sample = temperature > 0.0
            gen = generation_config(
                max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
                top_p=0.95 if sample else None, top_k=50 if sample else None, pad_token_id=tok.pad_token_id,
                eos_token_id=self._stop_ids(tok, model))
            replies = [""] * len(encoded)
            for k, start in enumerate(range(0, len(order), self.max_batch)):
                idx = order[start:start + self.max_batch]
                ids, mask = self._left_pad(torch, [encoded[i] for i in idx], tok.pad_token_id)
                with torch.random.fork_rng(devices=[]), torch.inference_mode():
                    torch.manual_seed(seed + k)  # per batch; forked so the caller's RNG is untouched
                    out = model.generate(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                                         generation_config=gen)
                for row, i in enumerate(idx):
                    text = tok.decode(out[row, ids.shape[1]:], skip_special_tokens=True)
                    # a reply cut at max_new_tokens can end inside a multi-byte character
                    replies[i] = str(text).strip().rstrip("\ufffd").strip()
            return replies

    def completion_loss(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Mean NLL per completion token; NaN for a completion with no token to score (empty)."""
        if len(prompts) != len(completions):
            raise LLMError(f"completion_loss needs one completion per prompt, got {len(prompts)} prompts "
                           f"and {len(completions)} completions")
        if not prompts:
            return []
        import torch

        with self._lock, self._torch_threads(torch):
            tok, model = self._load()
            rows = [self._score_row(tok, model, p, c) for p, c in zip(prompts, completions, strict=True)]
            losses = [math.nan] * len(rows)
            order = sorted((i for i in range(len(rows)) if rows[i][1]), key=lambda i: sum(map(len, rows[i])))
            start = 0
            while start < len(order):
                end, longest = start, 0
                while end < len(order) and end - start < self.max_batch:
                    longest = max(longest, len(rows[order[end]][1]))
                    if end > start and longest * (end - start + 1) > _LOSS_TOKEN_BUDGET:
                        break
                    end += 1
                idx = order[start:end]
                for i, loss in zip(idx, self._score_batch(torch, tok, model, [rows[i] for i in idx]), strict=True):
                    losses[i] = loss
                start = end
            return losses

    def _score_row(self, tok: Any, model: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        comp = list(tok(completion, add_special_tokens=False)["input_ids"])[:self.max_input_tokens]
        if prompt:
            prefix = self._prompt_ids(tok, prompt, None)
        else:
            # The completion alone: scored after a start token, as in pre-training; without one the first
            # token has no context and only the rest is scored.
            bos = model.config.bos_token_id if model.config.bos_token_id is not None else tok.bos_token_id
            prefix = [bos] if bos is not None else comp[:1]
            if bos is None:
                comp = comp[1:]
        return prefix, comp

    def _score_batch(self, torch: Any, tok: Any, model: Any, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        ids, mask = self._left_pad(torch, [p + c for p, c in rows], tok.pad_token_id)
        # Positions count real tokens only, so a left-padded row is scored as it would be alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        k = max(len(c) for _, c in rows)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(self._device), attention_mask=mask.to(self._device),
                           position_ids=positions.to(self._device), logits_to_keep=k + 1).logits
            # logits[:, j] predicts the token after it: the last k tokens are predicted by the first k kept.
            logits = logits[:, -(k + 1):-1].float()
            targets = ids[:, -k:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view(len(rows), k)
        return [float(nll[r, k - len(c):].mean()) for r, (_, c) in enumerate(rows)]
