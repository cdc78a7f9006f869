"""A recipe round-trips a strategy exactly, and a bad recipe file gives one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from protos.errors import ConfigError
from protos.recipe import Recipe, load_recipe, recipe_from_strategy, write_recipe
from protos.views import Metric, OperatorCall, Strategy

STRATEGY = Strategy(calls=(
    OperatorCall.of("remove_markup", keep_line_breaks=True),
    OperatorCall.of("normalize_text", form="NFKC"),
    OperatorCall.of("length_filter", min_answer_chars=12, max_answer_chars=4000),
    OperatorCall.of("special_char_filter", max_ratio=1.0e-7, count_rare_han=False),
    OperatorCall.of("screening_threshold", max_noisy_proba=0.35),
    OperatorCall.of("exact_dedup"),
))


def test_round_trip_is_exact(tmp_path: Path) -> None:
    recipe = recipe_from_strategy(STRATEGY, search_id="s-42", score=0.0375, metric=Metric.QUALITY_PROXY,
                                  rounds=3, evaluations=24, use_screening=False)
    path = tmp_path / "winning.yaml"
    write_recipe(path, recipe)
    loaded = load_recipe(path)
    assert loaded == recipe
    assert loaded.to_strategy() == STRATEGY and loaded.to_strategy().key == STRATEGY.key
    # types survive: an int stays an int, a float a float, an enum choice a string
    params = loaded.to_strategy().calls[2].kwargs
    assert type(params["min_answer_chars"]) is int
    assert loaded.to_strategy().calls[3].kwargs["max_ratio"] == 1.0e-7
    assert loaded.settings.use_screening is False and loaded.rounds == 3 and loaded.evaluations == 24


def test_file_says_what_it_is_and_how_to_run_it(tmp_path: Path) -> None:
    path = tmp_path / "winning.yaml"
    write_recipe(path, recipe_from_strategy(STRATEGY, search_id="s-1", score=None))
    text = path.read_text()
    assert text.startswith("# autodp recipe")
    assert "autodp site process --config site.yaml --recipe winning.yaml" in text
    assert STRATEGY.key in text
    assert [p.name for p in tmp_path.iterdir()] == ["winning.yaml"]  # no temporary file left behind
    doc = yaml.safe_load(text)
    assert doc["strategy"][0] == {"op": "remove_markup", "params": {"keep_line_breaks": True}}
    assert "score" not in doc  # unknown score is left out, not written as null


def test_empty_strategy_round_trips(tmp_path: Path) -> None:
    write_recipe(tmp_path / "r.yaml", recipe_from_strategy(Strategy(), search_id="s"))
    assert load_recipe(tmp_path / "r.yaml").to_strategy().key == Strategy().key


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expect"), [
    ("search_id: s\nstrategy: [{op: a\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("search_id: s\nsurprise: 1\n", "'surprise': unknown key"),
    ("search_id: s\nstrategy: [{op: remove_markup, extra: 1}]\n", "'strategy.0.extra': unknown key"),
    ("strategy: []\n", "'search_id'"),
    ("search_id: s\nstrategy: [{op: 'rm -rf /'}]\n", "'strategy.0.op'"),
    ("search_id: s\nstrategy: [{op: length_filter, params: {min_answer_chars: [1, 2]}}]\n",
     "parameter 'min_answer_chars' must be a bool, a number or an identifier"),
    ("search_id: s\nstrategy: [{op: normalize_text, params: {form: 'free text here'}}]\n",
     "'strategy.0.params.form'"),
    ("search_id: s\nstrategy: [{op: length_filter, params: {min_answer_chars: .nan}}]\n", "finite"),
    ("search_id: s\nrecipe_version: 9\n", "unsupported recipe version 9"),
    ("search_id: s\nscore: .inf\n", "'score'"),
])
def test_bad_files_give_one_clear_line(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(_write(tmp_path, text))
    msg = str(e.value)
    assert expect in msg and "\n" not in msg and msg.startswith("recipe ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_unknown_operator_loads_the_site_decides(tmp_path: Path) -> None:
    # Only the form is checked here; whether an operator exists or is allowed is each site's policy.
    path = _write(tmp_path, "search_id: s\nstrategy:\n  - op: exfiltrate\n    params: {everything: true}\n")
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.to_strategy().calls[0].op == "exfiltrate"
