"""The offline meta-agent backend: a local transformers model whose answers a grammar keeps inside the answer
schema. Most tests use a tiny random-weight Llama with the real SmolLM2 tokenizer: random weights choose
freely among what the grammar allows, which is what must never leave the schema. One slow test runs the real
SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coordinator.agent import (
    AgentConfigError,
    AgentError,
    LLMProposer,
    LocalChat,
    answer_schema,
    build_messages,
    start_groups,
)
from coordinator.agent.local import SchemaGrammars, loaded_model
from coordinator.config import AgentConfig
from coordinator.proposers import ScoredStrategy
from protos.catalog import check_strategy, index_catalog
from protos.views import OperatorCall, OperatorSpec, ParamSpec, ParamType, Strategy, Team
from tests.unit.coordinator.test_meta_agent import CATALOG as META_CATALOG
from tests.unit.coordinator.tiny_chat import build_tiny_chat_model, one_torch_thread  # noqa: F401 (autouse)

SMALL = META_CATALOG  # the meta-agent tests' catalog: every parameter type, one operator per team
ODD = (  # bounds that are easy to get wrong: negative, wide, narrow, one-value, many enum choices
    OperatorSpec(name="shift", team=Team.OPTIMIZATION, version="1", params=(
        ParamSpec(name="offset", type=ParamType.INT, int_min=-50, int_max=-3, int_default=-10),
        ParamSpec(name="scale", type=ParamType.FLOAT, float_min=-2.5, float_max=-0.25, float_default=-1.0))),
    OperatorSpec(name="wide", team=Team.SELECTION, version="1", params=(
        ParamSpec(name="n", type=ParamType.INT, int_min=7, int_max=1_000_000, int_default=1000),
        ParamSpec(name="fixed", type=ParamType.INT, int_min=3, int_max=3, int_default=3),
        ParamSpec(name="eps", type=ParamType.FLOAT, float_min=0.001, float_max=0.002, float_default=0.0015))),
    OperatorSpec(name="pick", team=Team.GENERATION, version="1", params=(
        ParamSpec(name="mode", type=ParamType.ENUM, choices=tuple(f"m{i}" for i in range(12)), enum_default="m0"),
        ParamSpec(name="flag", type=ParamType.BOOL, bool_default=True))),
)
ONE = (OperatorSpec(name="only_op", team=Team.CLEANING, version="1", params=(
    ParamSpec(name="x", type=ParamType.INT, int_min=10, int_max=12, int_default=11),)),)


# ---- a small JSON-schema checker for the subset answer_schema uses (jsonschema is not a dependency) ----

def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "boolean": bool}[kind])


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    known = {"type", "enum", "properties", "required", "additionalProperties", "anyOf", "items", "minItems",
             "maxItems", "minimum", "maximum", "prefixItems"}
    assert set(schema) <= known, f"checker does not know {set(schema) - known}"
    if "anyOf" in schema:
        branches = [schema_errors(value, s, where) for s in schema["anyOf"]]
        return [] if any(not b for b in branches) else [f"{where}: matches no anyOf branch"]
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [f"{where}: not {schema['type']}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: not in enum")
    if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{where}: out of bounds")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", {})
            errors += [f"{where}[{i}]: no item allowed"] if sub is False else schema_errors(item, sub, f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            errors += [f"{where}: extra {k}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errors += schema_errors(v, props[k], f"{where}.{k}")
    return errors


def test_the_checker_catches_what_it_must() -> None:
    schema = answer_schema(SMALL, 2, 2)
    ok = {"strategies": [[{"op": "exact_dedup", "params": {}}],
                         [{"op": "length_filter", "params": {"min_len": 100}},
                          {"op": "diversity_select", "params": {"keep_ratio": 0.05}}]]}
    assert schema_errors(ok, schema) == []
    for bad in ('{"strategies": [[{"op": "exact_dedup", "params": {}}]]}',  # one strategy of two
                '{"strategies": [[], [{"op": "exact_dedup", "params": {}}]]}',  # an empty strategy
                '{"strategies": [[{"op": "length_filter", "params": {"min_len": 101}}], [{"op": "exact_dedup", '
                '"params": {}}]]}',
                '{"strategies": [[{"op": "length_filter", "params": {"min_len": 1.5}}], [{"op": "exact_dedup", '
                '"params": {}}]]}',
                '{"strategies": [[{"op": "exact_dedup", "params": {"x": 1}}], [{"op": "exact_dedup", '
                '"params": {}}]]}',
                '{"strategies": [[{"op": "nope", "params": {}}], [{"op": "exact_dedup", "params": {}}]]}'):
        assert schema_errors(json.loads(bad), schema), bad
    starts = answer_schema(SMALL, 2, 2, [["exact_dedup"], ["length_filter", "diversity_select"]])
    assert schema_errors(ok, starts) == []
    swapped = {"strategies": ok["strategies"][::-1]}  # each strategy now starts outside its slot's group
    assert schema_errors(swapped, starts)


def test_answers_under_diverse_starts_begin_in_their_slots_group(tiny_dir: Path) -> None:
    chat, catalog = LocalChat(tiny_dir), SMALL + ODD
    for seed in range(3):
        groups = start_groups(catalog, 3, seed)
        schema = answer_schema(catalog, 3, 2, groups)
        text = chat.chat_json(build_messages(1, 3, 2, catalog, [], groups), schema, temperature=1.0, seed=seed)
        value = json.loads(text)
        assert schema_errors(value, schema) == [], text
        assert [s[0]["op"] in g for s, g in zip(value["strategies"], groups, strict=True)] == [True] * 3


# ---- the tiny model ----



@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide Llama with random weights and the real SmolLM2 tokenizer and chat template."""
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def _messages(catalog: tuple[OperatorSpec, ...], k: int, max_length: int) -> list[dict[str, str]]:
    return build_messages(1, k, max_length, catalog, [])


CASES = [(SMALL, 3, 3, 0.7), (SMALL, 1, 1, 1.5), (ODD, 2, 3, 1.0), (ODD, 4, 2, 2.0), (ONE, 1, 1, 0.0),
         (SMALL + ODD, 2, 3, 1.2)]


@pytest.mark.parametrize(("catalog", "k", "max_length", "temperature"), CASES)
def test_every_answer_parses_and_follows_the_schema(tiny_dir: Path, catalog: tuple[OperatorSpec, ...], k: int,
                                                    max_length: int, temperature: float) -> None:
    chat = LocalChat(tiny_dir)
    schema = answer_schema(catalog, k, max_length)
    for seed in range(3):
        text = chat.chat_json(_messages(catalog, k, max_length), schema, temperature=temperature,
                              max_tokens=256 + 100 * k * max_length, seed=seed)
        assert chat.last is not None and chat.last.complete, text
        value = json.loads(text)
        assert schema_errors(value, schema) == [], text
        assert len(value["strategies"]) == k
        assert chat.last.sampled_tokens < chat.last.new_tokens  # the grammar forced the JSON around the choices


def test_sampling_is_seeded_and_temperature_zero_is_greedy(tiny_dir: Path) -> None:
    chat, schema, messages = LocalChat(tiny_dir), answer_schema(SMALL, 3, 3), _messages(SMALL, 3, 3)
    sampled = [chat.chat_json(messages, schema, temperature=1.0, seed=s) for s in (1, 2, 1)]
    assert sampled[0] == sampled[2] and sampled[0] != sampled[1]
    assert chat.chat_json(messages, schema, temperature=0.0, seed=1) == chat.chat_json(messages, schema,
                                                                                       temperature=0.0, seed=9)


def test_a_shared_prompt_prefix_is_reused_and_changes_nothing(tiny_dir: Path) -> None:
    chat, schema = LocalChat(tiny_dir), answer_schema(SMALL, 2, 3)
    first = _messages(SMALL, 2, 3)
    history = [ScoredStrategy(1, Strategy(calls=(OperatorCall.of("exact_dedup"),)), 0.1)]
    second = build_messages(2, 2, 3, SMALL, history)  # same system message and catalog, then other text
    chat.chat_json(first, schema, temperature=0.0)
    reused = chat.chat_json(second, schema, temperature=0.0)
    assert chat.last is not None and chat.last.reused_tokens > 200
    loaded_model(tiny_dir).cache = None  # forget it: the same prompt from scratch
    fresh = chat.chat_json(second, schema, temperature=0.0)
    assert chat.last.reused_tokens == 0 and fresh == reused


def test_the_grammar_refuses_what_the_schema_forbids(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    grammars = SchemaGrammars(AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True))
    schema = answer_schema(SMALL + ODD, 2, 2)
    assert grammars.compiled(schema) is grammars.compiled(json.loads(json.dumps(schema)))  # cached by content

    def accepts(text: str) -> bool:
        matcher = grammars.matcher(schema)
        return matcher.accept_string(text) and matcher.is_completed()

    dedup = '{"op": "exact_dedup", "params": {}}'
    assert accepts('{"strategies": [[' + dedup + '], [{"op": "shift", "params": {"offset": -3, "scale": -0.25}}, '
                   '{"op": "wide", "params": {"n": 1000000, "fixed": 3, "eps": 0.0015}}]]}')
    for step in ('{"op": "shift", "params": {"offset": -2, "scale": -1.0}}',  # above an int maximum
                 '{"op": "shift", "params": {"offset": -51, "scale": -1.0}}',  # below an int minimum
                 '{"op": "shift", "params": {"offset": -10, "scale": -0.2}}',  # above a float maximum
                 '{"op": "wide", "params": {"n": 1000001, "fixed": 3, "eps": 0.0015}}',
                 '{"op": "wide", "params": {"n": 8, "fixed": 4, "eps": 0.0015}}',
                 '{"op": "wide", "params": {"n": 8, "fixed": 3, "eps": 0.0021}}',
                 '{"op": "length_filter", "params": {"min_len": 5.5}}',  # a float for an integer
                 '{"op": "pick", "params": {"mode": "m12", "flag": true}}',  # not an enum choice
                 '{"op": "length_filter", "params": {}}',  # a required parameter left out
                 '{"op": "exact_dedup", "params": {"extra": 1}}',
                 '{"op": "not_an_op", "params": {}}'):
        assert not accepts('{"strategies": [[' + dedup + '], [' + step + ']]}'), step
    assert not accepts('{"strategies": [[' + dedup + ']]}')  # too few strategies
    assert not accepts('{"strategies": [[' + dedup + '], [' + dedup + '], [' + dedup + ']]}')  # too many
    assert not accepts('{"strategies": [[' + dedup + '], []]}')  # an empty strategy
    assert not accepts('{"strategies": [[' + dedup + '], [' + ", ".join([dedup] * 3) + ']]}')  # too long


def test_the_proposer_with_the_local_backend_gives_valid_strategies(tiny_dir: Path) -> None:
    history = [ScoredStrategy(1, Strategy(calls=(OperatorCall.of("exact_dedup"),)), 0.1)]
    for catalog in (SMALL, ODD):
        p = LLMProposer(backend="local", model_dir=tiny_dir, seed=3, max_length=3, max_reasks=1)
        out = p.propose(2, 4, catalog, history)
        assert len(out) == 4 and len({s.key for s in out}) == 4
        assert all(check_strategy(s, index_catalog(catalog), 3) == [] for s in out)
        assert history[0].strategy.key not in {s.key for s in out}
        assert p.last is not None and p.last.llm_calls >= 1 and p.last.from_llm >= 1
        assert not any("not JSON" in x or x == "no answer" for x in p.last.problems), p.last.problems
        p.close()


def test_settings_are_checked_and_failures_are_agent_errors(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="not a model folder"):
        LocalChat(tmp_path)
    with pytest.raises(AgentConfigError, match="base_url"):
        LLMProposer("http://127.0.0.1:9", "m", backend="local")
    with pytest.raises(AgentConfigError, match="model_dir"):
        LLMProposer("http://127.0.0.1:9", "m", model_dir=tiny_dir)
    with pytest.raises(AgentConfigError, match="backend"):
        LLMProposer(backend="remote")
    with pytest.raises(AgentConfigError, match="threads"):
        LLMProposer("http://127.0.0.1:9", "m", threads=1)
    with pytest.raises(AgentConfigError, match="threads"):
        LocalChat(tiny_dir, threads=0)
    assert isinstance(LLMProposer(model_dir=tiny_dir).client, LocalChat)  # no base_url: local
    (tmp_path / "config.json").write_text("{not json")
    secret = "PATIENT-1234 private words"
    with pytest.raises(AgentError, match="could not be loaded") as e:
        LocalChat(tmp_path).chat_json([{"role": "user", "content": secret}], answer_schema(SMALL, 1, 1))
    assert secret not in str(e.value)
    with pytest.raises(AgentError, match="context") as e:  # a prompt longer than the model's context
        LocalChat(tiny_dir).chat_json([{"role": "user", "content": secret * 800}], answer_schema(SMALL, 1, 1))
    assert "PATIENT" not in str(e.value)
    p = LLMProposer(model_dir=tmp_path, max_reasks=0)  # a broken model degrades the round to random, logged
    assert len(p.propose(1, 2, SMALL, [])) == 2 and p.last is not None and p.last.problems == ("no answer",)


def test_threads_are_set_for_the_answer_and_restored(tiny_dir: Path) -> None:
    import torch

    torch.set_num_threads(2)
    chat = LocalChat(tiny_dir, threads=1)
    text = chat.chat_json(_messages(SMALL, 1, 1), answer_schema(SMALL, 1, 1), temperature=0.0)
    assert json.loads(text)["strategies"] and torch.get_num_threads() == 2


def test_agent_config_picks_the_backend_from_base_url(tmp_path: Path) -> None:
    assert AgentConfig().backend == "local" and AgentConfig().base_url is None
    served = AgentConfig(base_url="http://127.0.0.1:8000", model="m")
    assert served.backend == "openai"
    assert AgentConfig(model_dir=tmp_path, model="my-model").model_dump()["model_dir"] == tmp_path
    for bad in ({"backend": "openai"}, {"base_url": "http://127.0.0.1:8000"},
                {"backend": "local", "base_url": "http://127.0.0.1:8000", "model": "m"},
                {"base_url": "http://127.0.0.1:8000", "model": "m", "model_dir": str(tmp_path)},
                {"base_url": "http://127.0.0.1:8000", "model": "m", "threads": 1}, {"threads": 0}):
        with pytest.raises(ValidationError):
            AgentConfig(**bad)


@pytest.mark.slow
def test_the_bundled_smollm2_proposes_a_round() -> None:
    """The real model: one propose round of 4 strategies of up to 3 steps, every one valid."""
    p = LLMProposer(seed=0, max_length=3, max_reasks=0)  # the default: SmolLM2-135M-Instruct on the CPU
    start = time.perf_counter()
    out = p.propose(1, 4, SMALL, [])
    took = time.perf_counter() - start
    assert len(out) == 4 and all(check_strategy(s, index_catalog(SMALL), 3) == [] for s in out)
    assert p.last is not None and p.last.from_llm >= 1, p.last.problems
    assert isinstance(p.client, LocalChat) and p.client.last is not None and p.client.last.complete
    print(f"\nSmolLM2 propose: {took:.1f} s, {p.client.last}")
