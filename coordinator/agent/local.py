"""The meta-agent offline, on the CPU: a small chat model loaded with transformers (default: the bundled
SmolLM2-135M-Instruct) whose every answer is forced, token by token, to follow the answer's JSON schema.

The constraint comes from xgrammar (a C++ grammar engine, vLLM's default structured-output backend): the
schema is compiled once into a grammar over the tokenizer's vocabulary, and before each sampled token the
tokens the grammar cannot take next are masked out. It was chosen over lm-format-enforcer (pure Python)
because it enforces what :func:`coordinator.agent.schema.answer_schema` relies on: integer and number
``minimum``/``maximum`` as well as ``minItems``/``maxItems``, ``enum`` and ``anyOf``; lm-format-enforcer
leaves numeric bounds open. Its cost is the install (pip adds triton on x86_64 Linux, never imported here).

Spans the grammar forces (``{"strategies": [[{"op": "``, a parameter name after an operator is chosen...)
are appended without sampling and fed to the model in one forward pass (jump-forward decoding): most of an
answer is forced, so this is most of the speed on a CPU. The keys/values of the last prompt are kept, and a
prompt that starts the same way (every prompt of a search starts with the system message and the catalog)
only prefills what differs.

Same interface as :class:`coordinator.agent.client.ChatClient` (``chat_json``, ``close``), so the proposer
repairs and checks the answer the same way. Loading happens on the first call and is shared by every
instance in the process (one model per folder); a lock keeps one generation at a time per model. Errors
are :class:`~coordinator.agent.errors.AgentError` naming exception types and counts, never prompt text.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.agent.errors import AgentConfigError, AgentError
from protos.errors import AutodpError

if TYPE_CHECKING:
    import torch
    import xgrammar

__all__ = ["MAX_NEW_TOKENS", "GenerationStats", "LocalChat", "SchemaGrammars", "loaded_model"]

log = logging.getLogger("autodp.agent")

MAX_NEW_TOKENS = 4096  # hard cap on one answer, whatever max_tokens asks
_GRAMMARS_KEPT = 64  # compiled grammars kept per tokenizer (one per (k, max_length, catalog) seen)


class SchemaGrammars:
    """JSON schemas compiled into xgrammar grammars for one tokenizer, cached by the schema's JSON text (a
    search asks the same few schemas every round)."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        import xgrammar as xgr

        # vocab_size: the model's logits width, which may exceed the tokenizer's (padded embeddings)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[str, xgrammar.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compiled(self, schema: dict[str, Any]) -> xgrammar.CompiledGrammar:
        # Keys keep their order: the grammar writes properties in the schema's order (answer_schema is
        # deterministic, so one schema is one key).
        key = json.dumps(schema, separators=(",", ":"))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:  # one line, no whitespace runs: the answer stays short and its length bounded
            grammar = self._compiler.compile_json_schema(key, any_whitespace=False, strict_mode=True)
        except Exception as e:  # the engine raises several types; all mean "unusable schema"
            raise AgentError(f"the local meta-agent cannot compile the answer schema ({type(e).__name__})") from None
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > _GRAMMARS_KEPT:
                self._cache.popitem(last=False)
        return grammar

    def matcher(self, schema: dict[str, Any]) -> xgrammar.GrammarMatcher:
        """A fresh matcher (one per answer: it holds the parse state) over the cached grammar of ``schema``."""
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compiled(schema))


@dataclass(frozen=True)
class GenerationStats:
    """How the last answer went, in counts and seconds (``LocalChat.last``)."""

    prompt_tokens: int
    new_tokens: int  # tokens of the answer, sampled and forced
    sampled_tokens: int  # of which the model chose (the rest the grammar forced)
    reused_tokens: int  # prompt tokens whose keys/values came from the previous call
    forward_passes: int
    seconds: float
    complete: bool  # the grammar reached its end before the token budget ran out

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Loaded:
    model: Any  # a transformers causal LM, eval mode, CPU
    tokenizer: Any
    grammars: SchemaGrammars
    context: int
    lock: threading.Lock  # one generation at a time: the prefix cache below is shared
    # The token ids and key/value cache of the last answer (prompt and answer): the next prompt of a search
    # starts with the same system message and catalog (~2k tokens), which then need no new prefill.
    cached_ids: list[int] = field(default_factory=list)
    cache: Any = None


_MODELS: dict[Path, _Loaded] = {}
_MODELS_LOCK = threading.Lock()


def loaded_model(folder: Path) -> _Loaded:
    """The model, tokenizer and grammar cache of ``folder``, loaded once per process."""
    folder = folder.resolve()
    with _MODELS_LOCK:
        if folder not in _MODELS:
            _MODELS[folder] = _load(folder)
        return _MODELS[folder]


def _load(folder: Path) -> _Loaded:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, trust_remote_code=False,
                                                          use_safetensors=True, dtype=torch.float32)
        model.eval()
        vocab = int(model.get_output_embeddings().weight.shape[0])
        grammars = SchemaGrammars(tokenizer, vocab_size=vocab)
    except AgentError:
        raise
    except Exception as e:  # OSError, ValueError, safetensors and tokenizer errors alike
        raise AgentError(f"the local meta-agent model could not be loaded from {folder} ({type(e).__name__})") \
            from None
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    log.info("local meta-agent model loaded from %s (%d parameters, context %d)", folder,
             sum(p.numel() for p in model.parameters()), context)
    return _Loaded(model, tokenizer, grammars, context, threading.Lock())


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    import torch

    if temperature == 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)  # masked tokens are -inf: probability 0
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _reusable_prefix(m: _Loaded, prompt_ids: list[int]) -> tuple[Any, int]:
    """A copy of the cached keys/values cut to the longest prefix shared with ``prompt_ids`` (leaving at
    least one prompt token to feed), and its length; (None, 0) when nothing is shared."""
    if m.cache is None:
        return None, 0
    shared = 0
    for a, b in zip(m.cached_ids, prompt_ids[:-1], strict=False):
        if a != b:
            break
        shared += 1
    if shared < 16:  # a different prompt: not worth the copy
        return None, 0
    past = copy.deepcopy(m.cache)  # the stored one stays whole for the next call
    try:
        past.crop(shared - past.get_seq_length())  # a negative count: drop that many from the end
    except (ValueError, RuntimeError, AttributeError):  # a cache type that cannot be cut: prefill everything
        return None, 0
    if past.get_seq_length() != shared:
        return None, 0
    return past, shared


def _generate(m: _Loaded, prompt_ids: list[int], grammar: xgrammar.CompiledGrammar, temperature: float,
              budget: int, seed: int | None, jump_forward: bool) -> tuple[list[int], GenerationStats]:
    import torch
    import xgrammar as xgr

    start = time.perf_counter()
    matcher = xgr.GrammarMatcher(grammar)
    bitmask = xgr.allocate_token_bitmask(1, m.grammars.info.vocab_size)
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    out: list[int] = []
    sampled = passes = 0
    past, reused = _reusable_prefix(m, prompt_ids)
    feed = prompt_ids[reused:]
    with torch.inference_mode():
        while len(out) < budget:
            step = m.model(input_ids=torch.tensor([feed]), past_key_values=past, use_cache=True, logits_to_keep=1)
            past, passes = step.past_key_values, passes + 1
            logits = step.logits[:, -1, :].float()
            matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            token = _pick(logits[0], temperature, generator)
            if not matcher.accept_token(token):  # cannot happen after the mask; never emit it anyway
                raise AgentError("the local meta-agent sampled a token its grammar refused")
            if matcher.is_terminated():  # the stop token after a complete answer
                break
            out.append(token)
            sampled += 1
            feed = [token]
            if jump_forward and len(out) < budget:
                forced = matcher.find_jump_forward_tokens()[: budget - len(out)]
                for t in forced:
                    if not matcher.accept_token(t):
                        raise AgentError("the local meta-agent's grammar refused its own forced tokens")
                out += forced
                feed = [token, *forced]
    if past is not None:  # whatever of prompt and answer went through the model
        m.cached_ids, m.cache = [*prompt_ids, *out][: past.get_seq_length()], past
    stats = GenerationStats(prompt_tokens=len(prompt_ids), new_tokens=len(out), sampled_tokens=sampled,
                            reused_tokens=reused, forward_passes=passes, seconds=time.perf_counter() - start,
                            complete=matcher.is_terminated() or matcher.is_completed())
    return out, stats


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's thread count for one answer, restored after (it is process-wide); None leaves it alone. On a
    busy 2-core machine one thread decodes several times faster than two fighting for the cores."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalChat:
    """``chat_json`` answered by a local transformers model under a JSON-schema grammar.

    ``model_dir``: a transformers model folder (config, weights, tokenizer with a chat template); default
    the bundled SmolLM2-135M-Instruct, converted from its GGUF on first use
    (:func:`protos.bundled_models.smollm2_folder`). ``model``: a label for logs and reports only.
    ``threads``: torch threads while answering (default: as the process has them).
    """

    def __init__(self, model_dir: Path | str | None = None, *, model: str | None = None,
                 max_new_tokens: int = MAX_NEW_TOKENS, jump_forward: bool = True, threads: int | None = None) -> None:
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise AgentConfigError(f"agent: max_new_tokens must be in [1, {MAX_NEW_TOKENS}]")
        if threads is not None and threads < 1:
            raise AgentConfigError("agent.threads: must be >= 1")
        import importlib.util

        if importlib.util.find_spec("xgrammar") is None:
            raise AgentConfigError("agent: the local backend needs xgrammar (make setup installs it; by hand: "
                                   "pip install --no-deps xgrammar==0.2.9)")
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else None
        if self.model_dir is not None and not (self.model_dir / "config.json").is_file():
            raise AgentConfigError(f"agent.model_dir: {self.model_dir} is not a model folder (no config.json)")
        if self.model_dir is None:
            from protos.bundled_models import smollm2_gguf

            try:  # cheap: finds the package; the conversion waits for the first call
                smollm2_gguf()
            except AutodpError as e:
                raise AgentConfigError(f"agent: {e}") from None
        self.model = model or (self.model_dir.name if self.model_dir is not None else "SmolLM2-135M-Instruct")
        self.max_new_tokens, self.jump_forward, self.threads = max_new_tokens, jump_forward, threads
        self.last: GenerationStats | None = None
        self._loaded: _Loaded | None = None

    def _model(self) -> _Loaded:
        if self._loaded is None:
            folder = self.model_dir
            if folder is None:
                from protos.bundled_models import smollm2_folder

                try:
                    folder = smollm2_folder()
                except Exception as e:  # a failed conversion is a failed load
                    raise AgentError(f"the bundled meta-agent model could not be prepared ({type(e).__name__})") \
                        from None
            self._loaded = loaded_model(folder)
        return self._loaded

    def close(self) -> None:
        self._loaded = None  # the process-wide cache keeps the model for the next instance

    def __enter__(self) -> LocalChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prompt_ids(self, m: _Loaded, messages: Sequence[dict[str, str]]) -> list[int]:
        try:
            text = m.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            ids = m.tokenizer(text, add_special_tokens=False)["input_ids"]
        except Exception as e:  # template (jinja) and tokenizer errors alike
            raise AgentError(f"the local meta-agent could not build its prompt ({type(e).__name__})") from None
        return [int(i) for i in ids]

    def chat_json(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *, name: str = "strategies",
                  temperature: float = 0.7, max_tokens: int = 2048, seed: int | None = None) -> str:
        """The answer text: JSON following ``schema`` unless the token budget ran out first (then a cut-off
        prefix, which the proposer's repair treats as no answer). ``temperature`` 0 is greedy."""
        del name  # a server-side label for OpenAI endpoints; the grammar is the schema itself
        if not 0.0 <= temperature <= 2.0 or max_tokens < 1:
            raise AgentError("the local meta-agent needs temperature in [0, 2] and max_tokens >= 1")
        m = self._model()
        grammar = m.grammars.compiled(schema)
        prompt = self._prompt_ids(m, messages)
        budget = min(max_tokens, self.max_new_tokens, m.context - len(prompt))
        if budget < 1:
            raise AgentError(f"the prompt has {len(prompt)} tokens; the local model's context is {m.context}")
        with m.lock, _torch_threads(self.threads):
            try:
                out, stats = _generate(m, prompt, grammar, temperature, budget, seed, self.jump_forward)
            except AgentError:
                raise
            except Exception as e:  # torch and engine errors alike
                raise AgentError(f"the local meta-agent failed while generating ({type(e).__name__})") from None
        self.last = stats
        if not stats.complete:
            log.warning("the local meta-agent used its %d-token budget before its answer was complete", budget)
        log.info("local meta-agent: %d prompt tokens, %d answer tokens (%d sampled) in %.1f s", stats.prompt_tokens,
                 stats.new_tokens, stats.sampled_tokens, stats.seconds)
        return str(m.tokenizer.decode(out))
