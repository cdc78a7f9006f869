"""The privacy section of the site YAML: safe defaults, closed choices, unknown keys rejected."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from protos.config import load_yaml_model
from protos.errors import ConfigError
from site_agent.privacy import DPSGDSettings, PrivacySettings


def test_defaults_are_valid_and_documented_values() -> None:
    s = PrivacySettings()
    assert s.budget_scope == "window" and s.window_days == 30 and s.mechanism == "none"
    assert s.clip == (-1.0, 1.0) and s.sensitivity == 2.0 and s.dp_sgd is None and s.min_cohort >= 1


def test_yaml_section_loads_with_a_list_clip_and_dp_sgd(tmp_path: Path) -> None:
    f = tmp_path / "privacy.yaml"
    f.write_text("mechanism: gaussian\nrelease_epsilon: 0.5\nclip: [-0.5, 1.5]\ngrid: 0.01\n"
                 "dp_sgd: {target_epsilon: 3.0, accountant: rdp}\n")
    s = load_yaml_model(f, PrivacySettings)
    assert s.clip == (-0.5, 1.5) and s.sensitivity == 2.0
    assert s.dp_sgd is not None and s.dp_sgd.target_epsilon == 3.0 and s.dp_sgd.accountant == "rdp"


@pytest.mark.parametrize(("text", "key"), [
    ("epsilon_total: 3\n", "epsilon_total"),
    ("mechanism: exponential\n", "mechanism"),
    ("budget_scope: forever\n", "budget_scope"),
    ("dp_sgd: {target_epsilon: 1.0, clip: 2}\n", "dp_sgd.clip"),
    ("total_epsilon: -1\n", "total_epsilon"),
])
def test_bad_yaml_gives_one_line_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "privacy.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"'{key}'") as e:
        load_yaml_model(f, PrivacySettings)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [
    {"clip": (1.0, 1.0)},
    {"clip": (2.0, -1.0)},
    {"clip": (0.0, float("inf"))},
    {"mechanism": "gaussian", "release_epsilon": 1.0},  # the classic Gaussian bound needs epsilon < 1
])
def test_inconsistent_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PrivacySettings.model_validate(kwargs)


def test_dp_sgd_takes_exactly_one_of_target_epsilon_and_noise_multiplier() -> None:
    assert DPSGDSettings(noise_multiplier=1.1).target_epsilon is None
    with pytest.raises(ValidationError, match="exactly one"):
        DPSGDSettings()
    with pytest.raises(ValidationError, match="exactly one"):
        DPSGDSettings(target_epsilon=1.0, noise_multiplier=1.0)
