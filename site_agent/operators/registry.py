"""Operators by name: a plain-dict registry (Data-Juicer/Opacus style) plus entry-point plugins.

Built-in operators register themselves with ``@register_operator`` when their package is imported; a
hospital can ship its own operator class in a package that declares it under the ``autodp.operators``
entry-point group. Registering makes an operator *available*, not *allowed*: the local policy's
allowlist decides what may run (see ``site_agent.policy``).

The schema the site publishes (:func:`operator_spec`) is derived from each operator's ``Params``
model, so what the coordinator sees and what the operator validates cannot drift apart.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from protos.views import IDENT_PATTERN, OperatorSpec, ParamSpec, ParamType, ParamValue, Team
from site_agent.errors import OperatorError
from site_agent.operators.base import Operator

__all__ = [
    "PLUGIN_GROUP",
    "create_operator",
    "load_plugins",
    "operator_spec",
    "register_operator",
    "registered_operators",
]

PLUGIN_GROUP = "autodp.operators"
_REGISTRY: dict[str, type[Operator]] = {}
_loaded = False
_IDENT = re.compile(IDENT_PATTERN)


def _safe(name: str) -> str:
    # Names reaching us from a task are identifiers already; anything else is not echoed.
    return name if _IDENT.match(name) else "<not an identifier>"


def _bounds(field: FieldInfo) -> tuple[Any, Any]:
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Interval):
            lo = m.ge if m.ge is not None else lo
            hi = m.le if m.le is not None else hi
    return lo, hi


def _param_spec(op: str, name: str, field: FieldInfo) -> ParamSpec:
    if field.is_required():
        raise OperatorError(f"operator '{op}': parameter '{name}' needs a default")
    ann, default = field.annotation, field.default
    try:
        if ann is bool:
            return ParamSpec(name=name, type=ParamType.BOOL, bool_default=default)
        if ann is int or ann is float:
            lo, hi = _bounds(field)
            if lo is None or hi is None:
                raise OperatorError(f"operator '{op}': parameter '{name}' needs both ge and le bounds")
            if ann is int:
                return ParamSpec(name=name, type=ParamType.INT, int_min=lo, int_max=hi, int_default=default)
            return ParamSpec(name=name, type=ParamType.FLOAT, float_min=float(lo), float_max=float(hi),
                             float_default=float(default))
        if typing.get_origin(ann) is Literal:
            choices = typing.get_args(ann)
            if not all(isinstance(c, str) for c in choices):
                raise OperatorError(f"operator '{op}': parameter '{name}' choices must be strings")
            return ParamSpec(name=name, type=ParamType.ENUM, choices=choices, enum_default=default)
    except ValidationError:
        raise OperatorError(f"operator '{op}': parameter '{name}' has an invalid schema "
                            "(identifier name and choices, default within bounds)") from None
    raise OperatorError(f"operator '{op}': parameter '{name}' must be a bounded int or float, "
                        "a bool or a Literal of strings")


def operator_spec(cls: type[Operator]) -> OperatorSpec:
    """The typed schema a site publishes for ``cls``; raises OperatorError if it cannot be derived."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _IDENT.match(name):
        raise OperatorError("an operator class has a missing or non-identifier name")
    if not isinstance(getattr(cls, "team", None), Team):
        raise OperatorError(f"operator '{name}': team must be a protos.views.Team")
    params_model = getattr(cls, "Params", None)
    if not (inspect.isclass(params_model) and issubclass(params_model, BaseModel)):
        raise OperatorError(f"operator '{name}': Params must be a pydantic model")
    cfg = params_model.model_config
    if cfg.get("extra") != "forbid" or not cfg.get("frozen"):
        raise OperatorError(f"operator '{name}': Params must be frozen with extra='forbid'")
    params = tuple(_param_spec(name, n, f) for n, f in params_model.model_fields.items())
    try:
        return OperatorSpec(name=name, team=cls.team, version=cls.version, params=params)
    except ValidationError:
        raise OperatorError(f"operator '{name}': invalid version or parameter names") from None


def register_operator(cls: type[Operator]) -> type[Operator]:
    """Class decorator: validate ``cls`` and add it under its name. A taken name is an error."""
    if not (inspect.isclass(cls) and issubclass(cls, Operator)) or inspect.isabstract(cls):
        raise OperatorError("only concrete Operator subclasses can be registered")
    spec = operator_spec(cls)
    if spec.name in _REGISTRY:
        raise OperatorError(f"an operator named '{spec.name}' is already registered")
    _REGISTRY[spec.name] = cls
    return cls


def load_plugins() -> list[str]:
    """Register the operator classes declared under the ``autodp.operators`` entry-point group.

    Returns the names of the plugin operators. A plugin that fails to load is an error, not a warning:
    a hospital that installed one expects it to be there.
    """
    names: list[str] = []
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as e:
            raise OperatorError(
                f"operator plugin '{_safe(ep.name)}' failed to load: {type(e).__name__}") from None
        if not (inspect.isclass(obj) and issubclass(obj, Operator)):
            raise OperatorError(f"operator plugin '{_safe(ep.name)}' is not an Operator subclass")
        # A plugin module may also decorate its class itself; loading twice must not count as duplicate.
        if _REGISTRY.get(getattr(obj, "name", "")) is not obj:
            register_operator(obj)
        names.append(obj.name)
    return names


def registered_operators() -> dict[str, type[Operator]]:
    """All available operators by name: the built-ins plus entry-point plugins (loaded once)."""
    global _loaded
    if not _loaded:
        # importing the team packages registers the built-ins
        import site_agent.operators.cleaning  # noqa: F401
        import site_agent.operators.generation  # noqa: F401
        import site_agent.operators.optimization  # noqa: F401
        import site_agent.operators.selection  # noqa: F401

        load_plugins()
        _loaded = True
    return dict(_REGISTRY)


def create_operator(name: str, params: Mapping[str, ParamValue]) -> Operator:
    """Build the operator ``name`` with ``params`` (omitted ones take their defaults).

    Types are checked strictly against the published spec (no bool-for-int, no string-for-number) before
    pydantic builds the model, so a value the coordinator could not have meant is never coerced.
    """
    cls = registered_operators().get(name)
    if cls is None:
        raise OperatorError(f"unknown operator '{_safe(name)}'")
    spec = operator_spec(cls)
    values: dict[str, Any] = {}
    for pname, value in params.items():
        pspec = spec.param(pname)
        if pspec is None:
            raise OperatorError(f"operator '{name}' has no parameter '{_safe(pname)}'")
        why = pspec.check(value)
        if why is not None:
            raise OperatorError(f"operator '{name}': {why}")
        values[pname] = float(value) if pspec.type is ParamType.FLOAT else value
    try:
        model = cls.Params.model_validate(values)
    except ValidationError as e:
        where = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors())
        raise OperatorError(f"operator '{name}': invalid parameters ({where})") from None
    return cls(model)
