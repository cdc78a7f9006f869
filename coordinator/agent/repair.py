"""Turning a meta-agent answer (untrusted model output) into valid, new strategies.

The answer may be anything: prose around JSON, a ``<think>`` block, a bare list, 50 strategies, unknown
operators, numbers out of range or huge, wrong types, nested junk, text that tries to read as an
instruction. Nothing here raises on it. What can be repaired is repaired: numbers are clipped into their
bounds, unknown parameters dropped, missing or invalid values set to the default, unknown and repeated
operators dropped, long strategies cut to ``max_length``. Every strategy that comes out has all its
parameters explicit (one canonical form, so dedupe by ``Strategy.key`` works), passes
:func:`protos.catalog.check_strategy` and is not in ``seen``.

The report counts what was wrong; it names catalog operators and parameters only, never text from the
answer, so it can be logged and shown back to the model.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from coordinator.agent.schema import ANSWER_KEY, CHOICE_KEY
from protos.catalog import check_strategy
from protos.views import OperatorCall, OperatorSpec, ParamSpec, ParamType, ParamValue, Strategy

__all__ = ["RepairReport", "extract_strategies", "repair_answer", "repair_choices"]

_MAX_CANDIDATES = 32  # JSON start positions tried in a reply
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)
_STEP_KEYS = ("steps", "calls", "strategy", "pipeline", "operators")
_OP_KEYS = ("op", "operator", "name")


@dataclass
class RepairReport:
    """What was wrong with one answer, counted. ``issues`` keys are fixed phrases with catalog names."""

    parsed: bool = False
    offered: int = 0  # strategies found in the answer
    kept: int = 0
    issues: Counter[str] = field(default_factory=Counter)
    unit: str = "strategies"  # what was offered: "strategies" (mode write) or "choices" (mode choose)

    def summary(self, limit: int = 12) -> str:
        head = f"{self.offered} {self.unit} offered, {self.kept} kept" if self.parsed else "the answer was not JSON"
        rest = [f"{what} x{n}" for what, n in self.issues.most_common(limit)]
        return "; ".join([head, *rest])


def _candidates(text: str) -> list[Any]:
    """JSON values found in ``text``: the whole text first, then values starting at each ``{`` or ``[``."""
    text = _FENCE.sub("", _THINK.sub("", text)).strip()
    decoder = json.JSONDecoder()
    out: list[Any] = []
    starts = [i for i, ch in enumerate(text) if ch in "[{"][:_MAX_CANDIDATES]
    for start in dict.fromkeys([0, *starts]):  # in order, each position once
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):  # not JSON there, or nested past the recursion limit
            continue
        out.append(value)
    return out


def _as_calls(item: Any) -> list[Any] | None:
    if isinstance(item, list):
        return item
    if isinstance(item, dict):
        for key in _STEP_KEYS:
            if isinstance(item.get(key), list):
                return list(item[key])
        if any(isinstance(item.get(k), str) for k in _OP_KEYS):
            return [item]  # a one-step strategy written as a bare step
    return None


def _strategy_list(value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        if isinstance(value.get(ANSWER_KEY), list):
            return list(value[ANSWER_KEY])
        lists = [v for v in value.values() if isinstance(v, list)]
        return lists[0] if len(lists) == 1 else None
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and any(k in v for k in _OP_KEYS) for v in value):
            return [value]  # one strategy, not a list of them
        return value
    return None


def extract_strategies(text: str) -> list[Any] | None:
    """The raw strategy items of the first JSON value in ``text`` that holds any, or None."""
    for value in _candidates(text):
        items = _strategy_list(value)
        if items:
            return items
    return None


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and len(value) <= 32:
        for cast in (int, float):
            try:
                return cast(value.strip())
            except ValueError:
                pass
    return None


def _repair_value(spec: ParamSpec, value: Any, op: str, issues: Counter[str]) -> ParamValue:
    where = f"{op}.{spec.name}"
    t = spec.type
    if t is ParamType.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif t is ParamType.ENUM:
        if isinstance(value, str):
            if value in spec.choices:
                return value
            folded = {c.lower(): c for c in spec.choices}.get(value.strip().lower())
            if folded is not None:
                return folded
    else:
        num = _number(value)
        if num is not None and not (isinstance(num, float) and math.isnan(num)):
            lo, hi = (spec.int_min, spec.int_max) if t is ParamType.INT else (spec.float_min, spec.float_max)
            clipped = lo if num < lo else hi if num > hi else num  # exact int/float compare: no overflow
            if clipped != num:
                issues[f"{where} out of [{lo}, {hi}], clipped"] += 1
            if t is ParamType.INT:
                return min(max(int(round(clipped)), spec.int_min), spec.int_max)
            return min(max(round(float(clipped), 6), spec.float_min), spec.float_max)
    issues[f"{where} invalid, set to default"] += 1
    return spec.default


def _repair_call(raw: Any, spec: OperatorSpec, issues: Counter[str]) -> OperatorCall:
    given: Mapping[str, Any] = {}
    if isinstance(raw, dict):
        if isinstance(raw.get("params"), dict):
            given = raw["params"]
        elif "params" in raw:
            issues[f"{spec.name}: params not an object, defaults used"] += 1
        else:  # parameters written beside "op"
            given = {k: v for k, v in raw.items() if k not in _OP_KEYS}
    unknown = sum(1 for name in given if not isinstance(name, str) or spec.param(name) is None)
    if unknown:
        issues[f"{spec.name}: unknown parameter dropped"] += unknown
    values = tuple((p.name, _repair_value(p, given[p.name], spec.name, issues) if p.name in given else p.default)
                   for p in spec.params)
    return OperatorCall(op=spec.name, params=values)


def _op_name(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict):
        return next((raw[k] for k in _OP_KEYS if isinstance(raw.get(k), str)), None)
    return None


def _repair_strategy(item: Any, catalog: Mapping[str, OperatorSpec], max_length: int,
                     issues: Counter[str]) -> Strategy | None:
    raw_calls = _as_calls(item)
    if raw_calls is None:
        issues["strategy not a list of steps"] += 1
        return None
    calls: list[OperatorCall] = []
    used: set[str] = set()
    for raw in raw_calls[: 4 * max_length + 8]:  # bounded work on a junk list
        name = _op_name(raw)
        spec = catalog.get(name) if name is not None else None
        if spec is None:
            issues["unknown operator dropped"] += 1
            continue
        if spec.name in used:
            issues[f"{spec.name} repeated in one strategy, dropped"] += 1
            continue
        used.add(spec.name)
        calls.append(_repair_call(raw, spec, issues))
    if len(calls) > max_length:
        issues[f"strategy longer than {max_length} steps, cut"] += 1
        calls = calls[:max_length]
    if not calls:
        issues["strategy with no valid step"] += 1
        return None
    try:
        return Strategy(calls=tuple(calls))
    except ValidationError:  # cannot happen with catalog names and values; never let one through anyway
        issues["strategy failed validation"] += 1
        return None


def repair_answer(text: str, catalog: Mapping[str, OperatorSpec], max_length: int, seen: Set[str],
                  limit: int) -> tuple[list[Strategy], RepairReport]:
    """At most ``limit`` valid strategies from ``text`` whose keys are not in ``seen``, in answer order."""
    report = RepairReport()
    items = extract_strategies(text)
    if items is None:
        return [], report
    report.parsed, report.offered = True, len(items)
    if len(items) > 4 * limit + 8:  # 50 strategies for 4 asked: look at a bounded prefix only
        report.issues[f"more strategies than the {limit} asked, extra ignored"] += 1
        items = items[: 4 * limit + 8]
    out: list[Strategy] = []
    keys = set(seen)
    for item in items:
        if len(out) == limit:
            report.issues[f"more strategies than the {limit} asked, extra ignored"] += 1
            break
        strategy = _repair_strategy(item, catalog, max_length, report.issues)
        if strategy is None:
            continue
        if check_strategy(strategy, catalog, max_length):
            report.issues["strategy failed the catalog check"] += 1
            continue
        if strategy.key in keys:
            report.issues["strategy already evaluated or repeated"] += 1
            continue
        keys.add(strategy.key)
        out.append(strategy)
    report.kept = len(out)
    return out, report


def repair_choices(text: str, n_candidates: int, limit: int) -> tuple[list[int], RepairReport]:
    """Mode ``choose``: at most ``limit`` distinct candidate indices (0-based) from an answer
    ``{"choices": [id, ...]}`` with ids from 1 (a bare list is taken too), in answer order. Ids out of range,
    repeated or not whole numbers are counted and skipped; booleans are not ids."""
    report = RepairReport(unit="choices")
    raw: list[Any] | None = None
    for value in _candidates(text):
        if isinstance(value, dict) and isinstance(value.get(CHOICE_KEY), list):
            raw = value[CHOICE_KEY]
            break
        if isinstance(value, list) and raw is None:
            raw = value
    if raw is None:
        return [], report
    report.parsed, report.offered = True, len(raw)
    out: list[int] = []
    for item in raw[: 4 * limit + 8]:  # bounded work on a junk list
        if len(out) == limit:
            report.issues[f"more choices than the {limit} asked, extra ignored"] += 1
            break
        number = _number(item)
        if number is None or not math.isfinite(number) or number != int(number):
            report.issues["choice not a candidate id"] += 1
        elif not 1 <= number <= n_candidates:
            report.issues["choice out of range"] += 1
        elif int(number) - 1 in out:
            report.issues["candidate chosen twice"] += 1
        else:
            out.append(int(number) - 1)
    report.kept = len(out)
    return out, report
