"""The site's local policy: what the coordinator may ask this hospital to run.

Loaded from one YAML file (unknown keys rejected; errors name the key and line). The policy is an
explicit allowlist: an operator runs only if it is both installed (registered) and listed, plugins
included. ``parameter_bounds`` can only narrow what an operator accepts, never widen it; the narrowed
schema is what the site publishes (:func:`published_catalog`) and what every task is checked against
(:func:`check_task`) before any data is touched.

When a bound excludes an operator's own default, the published default moves inside the bound and a
task must then give that parameter explicitly (:func:`apply_policy_defaults` fills it in), because the
operator itself would otherwise fall back to its unnarrowed default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from protos.catalog import MAX_STRATEGY_LENGTH, Problem, check_strategy, index_catalog
from protos.config import first_error
from protos.views import (
    EvaluatorKind,
    Ident,
    Metric,
    OperatorCall,
    OperatorSpec,
    ParamSpec,
    ParamType,
    Strategy,
    Task,
    TaskStatus,
)
from site_agent.errors import PolicyError
from site_agent.evaluation.base import available_evaluators
from site_agent.operators.registry import operator_spec, registered_operators

__all__ = [
    "Bound",
    "Policy",
    "apply_policy_defaults",
    "check_task",
    "load_policy",
    "published_catalog",
]


class Bound(BaseModel):
    """A narrowing of one parameter: ``min``/``max`` for numbers, ``choices`` for enums."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: StrictInt | StrictFloat | None = None
    max: StrictInt | StrictFloat | None = None
    choices: tuple[Ident, ...] | None = None


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    allowed_operators: list[Ident]
    parameter_bounds: dict[Ident, dict[Ident, Bound]] = {}
    max_strategy_length: int = Field(default=8, ge=1, le=MAX_STRATEGY_LENGTH)
    allowed_evaluators: list[EvaluatorKind] = [EvaluatorKind.QUALITY_PROXY, EvaluatorKind.LORA]
    max_train_steps: int = Field(default=1000, ge=0, le=100_000)
    min_sample_rate_permille: int = Field(default=1, ge=1, le=1000)


class _BoundError(Exception):
    def __init__(self, loc: tuple[str, ...], why: str) -> None:
        super().__init__(why)
        self.loc, self.why = loc, why


def _narrow(op: str, p: ParamSpec, b: Bound) -> ParamSpec:
    where = ("parameter_bounds", op, p.name)
    if p.type is ParamType.BOOL:
        raise _BoundError(where, "a bool parameter cannot be bounded (disallow the operator instead)")
    if p.type is ParamType.ENUM:
        if b.min is not None or b.max is not None or b.choices is None:
            raise _BoundError(where, "an enum parameter takes 'choices' only")
        extra = [c for c in b.choices if c not in p.choices]
        if not b.choices or extra:
            raise _BoundError((*where, "choices"), f"must be a non-empty subset of {list(p.choices)}")
        choices = tuple(c for c in p.choices if c in b.choices)
        default = p.enum_default if p.enum_default in choices else choices[0]
        return p.model_copy(update={"choices": choices, "enum_default": default})
    if b.choices is not None:
        raise _BoundError(where, "a numeric parameter takes 'min'/'max' only")
    is_int = p.type is ParamType.INT
    lo0, hi0 = (p.int_min, p.int_max) if is_int else (p.float_min, p.float_max)
    for key, v in (("min", b.min), ("max", b.max)):
        if is_int and v is not None and not isinstance(v, int):
            raise _BoundError((*where, key), "must be a whole number")
        if v is not None and not lo0 <= v <= hi0:
            raise _BoundError((*where, key), f"{v} would widen the operator's range [{lo0}, {hi0}]")
    lo = lo0 if b.min is None else b.min
    hi = hi0 if b.max is None else b.max
    if lo > hi:
        raise _BoundError(where, f"min {lo} is above max {hi}")
    if is_int:
        return p.model_copy(update={"int_min": lo, "int_max": hi,
                                    "int_default": min(max(p.int_default, lo), hi)})
    return p.model_copy(update={"float_min": float(lo), "float_max": float(hi),
                                "float_default": float(min(max(p.float_default, lo), hi))})


def _published(policy: Policy) -> tuple[OperatorSpec, ...]:
    registered = registered_operators()
    out: list[OperatorSpec] = []
    for name in sorted(set(policy.allowed_operators) & set(registered)):
        spec = operator_spec(registered[name])
        bounds = policy.parameter_bounds.get(name, {})
        for pname in bounds:
            if spec.param(pname) is None:
                raise _BoundError(("parameter_bounds", name, pname), "the operator has no such parameter")
        params = tuple(_narrow(name, p, bounds[p.name]) if p.name in bounds else p for p in spec.params)
        out.append(spec.model_copy(update={"params": params}))
    return tuple(out)


def published_catalog(policy: Policy) -> tuple[OperatorSpec, ...]:
    """The operators this site offers: registered and allowed, with the policy's bounds applied.

    Allowed names that are not installed are left out; bounds that do not narrow raise PolicyError.
    """
    try:
        return _published(policy)
    except _BoundError as e:
        raise PolicyError(f"'{'.'.join(e.loc)}': {e.why}") from None


def _check_settings(task: Task, policy: Policy) -> list[Problem]:
    s, problems = task.settings, []
    if s.evaluator not in policy.allowed_evaluators:
        problems.append(Problem(TaskStatus.REJECTED_SETTINGS, f"evaluator '{s.evaluator}' is not allowed"))
    elif s.evaluator not in available_evaluators():
        problems.append(Problem(TaskStatus.REJECTED_SETTINGS,
                                f"evaluator '{s.evaluator}' is not installed at this site"))
    if (s.evaluator is EvaluatorKind.QUALITY_PROXY) != (s.metric is Metric.QUALITY_PROXY):
        problems.append(Problem(TaskStatus.REJECTED_SETTINGS,
                                f"metric '{s.metric}' does not go with evaluator '{s.evaluator}'"))
    if s.train_steps > policy.max_train_steps:
        problems.append(Problem(TaskStatus.REJECTED_SETTINGS,
                                f"train_steps={s.train_steps} above the policy's {policy.max_train_steps}"))
    if s.sample_rate_permille < policy.min_sample_rate_permille:
        problems.append(Problem(
            TaskStatus.REJECTED_SETTINGS,
            f"sample_rate_permille={s.sample_rate_permille} below the policy's {policy.min_sample_rate_permille}"))
    return problems


def check_task(task: Task, policy: Policy) -> list[Problem]:
    """Everything that stops ``task`` from running here, most specific first; empty when it may run."""
    registered = registered_operators()
    published = index_catalog(published_catalog(policy))
    # Registered-but-not-allowed operators join the catalog (unnarrowed) only so that check_strategy
    # does not call them unknown; each gets its own NOT_ALLOWED problem below.
    catalog = dict(published)
    problems: list[Problem] = []
    for i, call in enumerate(task.strategy.calls):
        if call.op in registered and call.op not in published:
            catalog.setdefault(call.op, operator_spec(registered[call.op]))
            problems.append(Problem(TaskStatus.REJECTED_OPERATOR_NOT_ALLOWED,
                                    f"step {i} ({call.op}): operator not allowed by this site's policy"))
    problems += check_strategy(task.strategy, catalog, max_length=policy.max_strategy_length)
    for i, call in enumerate(task.strategy.calls):
        if call.op not in published:
            continue
        own = operator_spec(registered[call.op])
        given = call.kwargs
        for p in published[call.op].params:
            own_p = own.param(p.name)
            if p.name not in given and own_p is not None and own_p.default != p.default:
                problems.append(Problem(
                    TaskStatus.REJECTED_SETTINGS,
                    f"step {i} ({call.op}): parameter '{p.name}' must be given: the operator's default "
                    "is outside this site's policy"))
    return problems + _check_settings(task, policy)


def apply_policy_defaults(strategy: Strategy, policy: Policy) -> Strategy:
    """``strategy`` with every omitted parameter of an allowed operator set to its published default."""
    published = index_catalog(published_catalog(policy))
    calls = []
    for call in strategy.calls:
        spec = published.get(call.op)
        if spec is None:
            calls.append(call)
            continue
        values = {p.name: p.default for p in spec.params} | call.kwargs
        calls.append(OperatorCall(op=call.op, params=tuple(values.items())))
    return Strategy(calls=tuple(calls))


# ---------------------------------------------------------------- loading

def _locate(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, int]:
    """(1-based line, depth) of the deepest YAML node along ``loc``, for error messages."""
    node, line, depth = root, None if root is None else root.start_mark.line + 1, 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        depth += 1
    return line, depth


def _fail(fname: str, root: yaml.Node | None, loc: tuple[Any, ...], why: str,
          whole_key: bool = True) -> PolicyError:
    line, depth = _locate(root, loc)
    # pydantic appends union-member tags ('int', 'float') to a location; they are not policy keys.
    key = ".".join(str(p) for p in (loc if whole_key else loc[:max(depth, 1)])) or "(top level)"
    return PolicyError(f"{fname}{f' line {line}' if line else ''}: '{key}': {why}")


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file, against the registered operators too. Raises PolicyError."""
    fname = Path(path).name
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"policy file {fname} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {fname} cannot be read as UTF-8 text ({type(e).__name__})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        raise PolicyError(f"{fname}{f' line {mark.line + 1}' if mark else ''}: not valid YAML "
                          f"({e.problem})") from None
    except yaml.YAMLError:
        raise PolicyError(f"{fname}: not valid YAML") from None
    if data is None:
        raise PolicyError(f"{fname}: the policy is empty; it needs at least 'allowed_operators'")
    if not isinstance(data, dict):
        raise PolicyError(f"{fname}: the policy must be a mapping of keys to values")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        loc, why, _ = first_error(e)
        raise _fail(fname, root, loc, why, whole_key=e.errors()[0]["type"] == "missing") from None
    registered = registered_operators()
    for i, name in enumerate(policy.allowed_operators):
        if name not in registered:
            raise _fail(fname, root, ("allowed_operators", i),
                        f"no operator of that name is installed (installed: {sorted(registered)})")
    for name in policy.parameter_bounds:
        if name not in policy.allowed_operators:
            raise _fail(fname, root, ("parameter_bounds", name), "bounds for an operator that is not allowed")
    try:
        _published(policy)
    except _BoundError as e:
        raise _fail(fname, root, e.loc, e.why) from None
    return policy
