"""A search's winning strategy as a YAML recipe that a hospital re-runs on its full data.

The coordinator writes one at the end of a search (:func:`recipe_from_strategy`, :func:`write_recipe`);
a site applies it locally with ``autodp site process`` (:func:`load_recipe`, :meth:`Recipe.to_strategy`).
A recipe holds what the protocol already carries and nothing more: operator and parameter names, typed
values (bool, int, float, or an enum choice that is an identifier), the search id, and a few numbers.
``Recipe.to_strategy()`` of a written recipe has the same ``Strategy.key`` as the strategy it came from.

Loading checks the form only (identifiers, types, known keys); whether this site has and allows the
operators is the site's own policy check, as for any task. Errors are one-line ``ConfigError``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from protos.config import StrictModel, first_error, read_yaml_mapping
from protos.errors import ConfigError
from protos.files import write_text_atomic
from protos.views import Ident, Metric, OperatorCall, ParamValue, Strategy

__all__ = [
    "RECIPE_VERSION",
    "Recipe",
    "RecipeSettings",
    "RecipeStep",
    "load_recipe",
    "recipe_from_strategy",
    "write_recipe",
]

RECIPE_VERSION = 1


def _check_value(name: str, value: object) -> None:
    # bool before int: True is an int to Python but a different value to the protocol.
    if isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"parameter '{name}' must be a finite number")
        return
    if not isinstance(value, str):
        raise ValueError(f"parameter '{name}' must be a bool, a number or an identifier (an enum choice)")


class RecipeStep(StrictModel):
    """One operator call: ``{op: name, params: {name: value}}``."""

    op: Ident
    params: dict[Ident, ParamValue] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _typed(cls, params: object) -> object:
        if params is None:
            return {}
        if isinstance(params, dict):
            for name, value in params.items():
                _check_value(str(name), value)
        return params


class RecipeSettings(StrictModel):
    use_screening: bool = Field(
        default=True, description="process only the rows the site's screening model marks noisy (as the search did)")


class Recipe(StrictModel):
    recipe_version: int = RECIPE_VERSION
    search_id: Ident
    strategy: tuple[RecipeStep, ...] = ()
    score: float | None = Field(default=None, description="the strategy's aggregate score across sites")
    metric: Metric | None = None
    rounds: int = Field(default=0, ge=0)
    evaluations: int = Field(default=0, ge=0)
    settings: RecipeSettings = RecipeSettings()

    @field_validator("recipe_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"unsupported recipe version {v} (this autodp reads version {RECIPE_VERSION})")
        return v

    @field_validator("score")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def to_strategy(self) -> Strategy:
        """The strategy this recipe describes. Raises ConfigError when the steps do not form one
        (a parameter given twice cannot happen in YAML, so this is a formality kept for safety)."""
        try:
            return Strategy(calls=tuple(OperatorCall(op=s.op, params=tuple(s.params.items()))
                                        for s in self.strategy))
        except ValidationError as e:
            raise ConfigError(f"recipe strategy is invalid: {first_error(e)[1]}") from None


def recipe_from_strategy(strategy: Strategy, *, search_id: str, score: float | None = None,
                         metric: Metric | None = None, rounds: int = 0, evaluations: int = 0,
                         use_screening: bool = True) -> Recipe:
    """The recipe of ``strategy`` (parameters exactly as given: ``to_strategy().key == strategy.key``)."""
    steps = tuple(RecipeStep(op=c.op, params=dict(c.params)) for c in strategy.calls)
    return Recipe(search_id=search_id, strategy=steps, score=score, metric=metric, rounds=rounds,
                  evaluations=evaluations, settings=RecipeSettings(use_screening=use_screening))


def _header(recipe: Recipe, path: Path) -> str:
    strategy = recipe.to_strategy()
    score = "n/a" if recipe.score is None else f"{recipe.score:.4f}"
    lines = [
        "autodp recipe: the winning data-processing strategy of a federated search.",
        f"search {recipe.search_id}: {strategy.describe()}",
        f"score {score} (aggregate across sites), {recipe.rounds} round(s), {recipe.evaluations} evaluation(s); "
        f"strategy key {strategy.key}",
        "Apply it to a site's full data, inside the hospital:",
        f"  autodp site process --config site.yaml --recipe {path.name} --output processed.jsonl",
    ]
    return "".join(f"# {line}\n" for line in lines)


def _document(recipe: Recipe) -> dict[str, Any]:
    doc = recipe.model_dump(mode="json", exclude_none=True)
    doc["strategy"] = [{"op": s.op, "params": dict(sorted(s.params.items()))} for s in recipe.strategy]
    return doc


def write_recipe(path: Path, recipe: Recipe) -> None:
    """Write ``recipe`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    text = _header(recipe, path) + yaml.safe_dump(_document(recipe), sort_keys=False, allow_unicode=False)
    write_text_atomic(path, text)


def _where(loc: tuple[int | str, ...]) -> str:
    # pydantic appends the union member it tried ('bool', 'int', ...) to a location: not a recipe key.
    parts = [str(p) for p in loc if p not in ("bool", "int", "float", "str", "constrained-str")]
    return ".".join(parts) or "(top level)"


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe file. Raises ConfigError naming the file and the key."""
    path = Path(path)
    data = read_yaml_mapping(path, "recipe", "a mapping with 'search_id' and 'strategy'")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        loc, why, _ = first_error(e)
        raise ConfigError(f"recipe {path}: '{_where(loc)}': {why}") from None
    recipe.to_strategy()  # the steps must form a valid Strategy too
    return recipe
