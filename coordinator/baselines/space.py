"""The strategy space the search baselines explore, seen only through the operator catalog.

A point is a :class:`Strategy` of 1..``max_length`` distinct operators, each with every parameter of its
spec set within bounds. The helpers here draw, repair and perturb such points; all randomness comes from
the ``random.Random`` passed in, so a proposer seeded per round is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from protos.catalog import check_strategy
from protos.views import OperatorCall, OperatorSpec, ParamSpec, ParamType, ParamValue, Strategy

__all__ = [
    "FLOAT_DIGITS",
    "clip_value",
    "effective_max_length",
    "is_valid",
    "mutate_param",
    "mutate_value",
    "random_call",
    "random_strategy",
    "random_value",
    "repair",
]

FLOAT_DIGITS = 4  # same rounding as RandomProposer: readable reports, stable keys


def effective_max_length(catalog: Sequence[OperatorSpec], max_length: int) -> int:
    """Operators are distinct within a strategy, so a small catalog caps the length too."""
    return max(0, min(max_length, len({s.name for s in catalog})))


def clip_value(spec: ParamSpec, value: object) -> ParamValue:
    """The nearest valid value: numbers clipped into bounds, anything of the wrong type -> the default."""
    t = spec.type
    if t is ParamType.BOOL:
        return value if isinstance(value, bool) else spec.bool_default
    if t is ParamType.INT:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return spec.int_default
        return min(spec.int_max, max(spec.int_min, int(round(value))))
    if t is ParamType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return spec.float_default
        # rounding may step just past a bound that has more digits, so clip after rounding
        return min(spec.float_max, max(spec.float_min, round(float(value), FLOAT_DIGITS)))
    return value if isinstance(value, str) and value in spec.choices else spec.enum_default


def random_value(rng: random.Random, spec: ParamSpec) -> ParamValue:
    if spec.type is ParamType.INT:
        return rng.randint(spec.int_min, spec.int_max)
    if spec.type is ParamType.FLOAT:
        return clip_value(spec, rng.uniform(spec.float_min, spec.float_max))
    if spec.type is ParamType.BOOL:
        return rng.random() < 0.5
    return rng.choice(spec.choices)


def random_call(rng: random.Random, spec: OperatorSpec, default_share: float = 0.5) -> OperatorCall:
    """Each parameter at its default with probability ``default_share`` (defaults are usually sane)."""
    return OperatorCall(op=spec.name, params=tuple(
        (p.name, p.default if rng.random() < default_share else random_value(rng, p)) for p in spec.params))


def random_strategy(rng: random.Random, specs: Sequence[OperatorSpec], max_length: int,
                    first: OperatorSpec | None = None) -> Strategy:
    """A uniform length in [1, max_length] and distinct operators in random order; ``first`` pins step 0
    (used to spread a seeding round over the whole catalog)."""
    limit = effective_max_length(specs, max_length)
    if limit == 0:
        return Strategy()
    length = rng.randint(1, limit)
    rest = [s for s in specs if first is None or s.name != first.name]
    chosen = ([first] if first is not None else []) + rng.sample(rest, length - (first is not None))
    return Strategy(calls=tuple(random_call(rng, s) for s in chosen))


def mutate_value(rng: random.Random, spec: ParamSpec, value: ParamValue) -> ParamValue:
    """A different valid value near ``value`` where the spec allows one (local steps keep what was good)."""
    t = spec.type
    current = clip_value(spec, value)
    if t is ParamType.BOOL:
        return not current
    if t is ParamType.ENUM:
        others = [c for c in spec.choices if c != current]
        return rng.choice(others) if others else current
    if t is ParamType.INT:
        assert isinstance(current, int)
        if spec.int_min == spec.int_max:
            return current
        step = max(1, math.ceil(0.3 * (spec.int_max - spec.int_min)))
        delta = rng.choice([d for d in range(-step, step + 1) if d != 0])
        moved = min(spec.int_max, max(spec.int_min, current + delta))
        if moved == current:  # pinned at a bound: step back inside instead
            moved = min(spec.int_max, max(spec.int_min, current - delta))
        return moved
    assert isinstance(current, float | int)
    width = spec.float_max - spec.float_min
    if width <= 0:
        return current
    return clip_value(spec, rng.gauss(float(current), 0.2 * width))


def mutate_param(rng: random.Random, call: OperatorCall, spec: ParamSpec) -> OperatorCall:
    """``call`` with parameter ``spec`` moved by :func:`mutate_value` (set from its default if absent)."""
    values = call.kwargs
    values[spec.name] = mutate_value(rng, spec, values.get(spec.name, spec.default))
    return OperatorCall(op=call.op, params=tuple(values.items()))


def repair(strategy: Strategy, index: Mapping[str, OperatorSpec], max_length: int) -> Strategy | None:
    """Fit a strategy (e.g. from history, proposed against an older catalog) into the given catalog:
    unknown operators and repeated operators dropped, every parameter present and within bounds, cut to
    ``max_length``. None when nothing is left."""
    calls: list[OperatorCall] = []
    used: set[str] = set()
    for call in strategy.calls:
        spec = index.get(call.op)
        if spec is None or call.op in used:
            continue
        given = call.kwargs
        calls.append(OperatorCall(op=call.op, params=tuple(
            (p.name, clip_value(p, given[p.name]) if p.name in given else p.default) for p in spec.params)))
        used.add(call.op)
        if len(calls) == max_length:
            break
    return Strategy(calls=tuple(calls)) if calls else None


def is_valid(strategy: Strategy, index: Mapping[str, OperatorSpec], max_length: int) -> bool:
    ops = [c.op for c in strategy.calls]
    return (0 < len(ops) <= max_length and len(set(ops)) == len(ops)
            and not check_strategy(strategy, index, max_length))
