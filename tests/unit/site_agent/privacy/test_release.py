"""Released scores: clipped, noised with the documented scale, on the grid; checked statistically."""

import math

import numpy as np
import pytest
from scipy import stats

from site_agent import release as agent_release
from site_agent.privacy import (
    DPSGDSettings,
    PrivacyError,
    PrivacySettings,
    check_cohort,
    gaussian_sigma,
    laplace_scale,
    noise_std,
    planned_delta,
    planned_epsilon,
    release_rng,
    release_score,
)

N = 10_000


def _releases(raw: float, settings: PrivacySettings, seed: int = 20240611) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([release_score(raw, settings, rng) for _ in range(N)])


def _on_grid(values: np.ndarray, grid: float) -> bool:
    steps = values / grid
    return bool(np.all(np.abs(steps - np.round(steps)) < 1e-6))


@pytest.mark.parametrize(("raw", "clipped"), [(0.3, 0.3), (5.0, 1.0), (-7.0, -1.0)])
def test_laplace_mean_and_variance_match_the_mechanism(raw: float, clipped: float) -> None:
    s = PrivacySettings(mechanism="laplace", release_epsilon=1.0, clip=(-1.0, 1.0), grid=1e-4)
    b = s.sensitivity / s.release_epsilon
    assert laplace_scale(s) == b == 2.0 and noise_std(s) == pytest.approx(math.sqrt(2) * b)
    out = _releases(raw, s)
    expected_var = 2 * (s.sensitivity / s.release_epsilon) ** 2
    assert abs(out.mean() - clipped) < 3 * math.sqrt(expected_var / N)  # clipped first, noise unbiased
    assert out.var(ddof=1) == pytest.approx(expected_var, rel=0.05)
    assert _on_grid(out, s.grid)


def test_laplace_noise_follows_the_laplace_cdf() -> None:
    s = PrivacySettings(mechanism="laplace", release_epsilon=0.5, clip=(0.0, 1.0), grid=1e-4)
    noise = _releases(0.4, s, seed=7) - 0.4
    assert stats.kstest(noise, "laplace", args=(0.0, laplace_scale(s))).pvalue > 0.001
    # The test has power: the same draws are not Laplace at 1.5 times the scale, nor Gaussian.
    assert stats.kstest(noise, "laplace", args=(0.0, 1.5 * laplace_scale(s))).pvalue < 0.001
    assert stats.kstest(noise, "norm", args=(0.0, noise_std(s))).pvalue < 0.001


def test_gaussian_sigma_formula_and_variance() -> None:
    s = PrivacySettings(mechanism="gaussian", release_epsilon=0.5, delta=1e-5, clip=(0.0, 1.0), grid=1e-3)
    sigma = 1.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5
    assert gaussian_sigma(s) == pytest.approx(sigma) and noise_std(s) == pytest.approx(sigma)
    out = _releases(0.25, s, seed=3)
    assert abs(out.mean() - 0.25) < 3 * sigma / math.sqrt(N)
    assert out.var(ddof=1) == pytest.approx(sigma**2, rel=0.05)
    assert stats.kstest(out - 0.25, "norm", args=(0.0, sigma)).pvalue > 0.001
    assert _on_grid(out, s.grid)


@pytest.mark.parametrize("grid", [0.05, 0.25, 1e-3])
@pytest.mark.parametrize("mechanism", ["none", "laplace", "gaussian"])
def test_every_released_value_lies_on_the_grid(grid: float, mechanism: str) -> None:
    s = PrivacySettings.model_validate({"mechanism": mechanism, "release_epsilon": 0.9, "grid": grid})
    rng = np.random.default_rng(1)
    out = np.array([release_score(float(x), s, rng) for x in rng.uniform(-2, 2, 500)])
    assert _on_grid(out, grid)


def test_without_noise_the_release_is_the_clipped_quantized_score() -> None:
    s = PrivacySettings(mechanism="none", clip=(-0.5, 0.5), grid=0.01)
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert release_score(0.1234, s, rng) == 0.12
    assert release_score(3.0, s, rng) == 0.5 and release_score(-3.0, s, rng) == -0.5
    assert rng.bit_generator.state == before  # no noise drawn
    with pytest.raises(PrivacyError, match="finite"):
        release_score(float("nan"), s, rng)
    assert agent_release.quantize(0.12345, 1e-3) == 0.123  # the agent's old import point still works


def test_the_task_generator_repeats_per_task_and_depends_on_the_site_secret() -> None:
    s = PrivacySettings(mechanism="laplace")
    a = release_score(0.1, s, release_rng("task-1", b"secret-a"))
    assert release_score(0.1, s, release_rng("task-1", b"secret-a")) == a  # a replay releases the same value
    assert release_score(0.1, s, release_rng("task-2", b"secret-a")) != a
    assert release_score(0.1, s, release_rng("task-1", b"secret-b")) != a  # the task id alone is not enough


def test_planned_epsilon_adds_dp_sgd_and_release() -> None:
    none = PrivacySettings()
    lap = PrivacySettings(mechanism="laplace", release_epsilon=0.5,
                          dp_sgd=DPSGDSettings(target_epsilon=3.0, delta=1e-5))
    by_noise = PrivacySettings(mechanism="gaussian", release_epsilon=0.5, delta=1e-6,
                               dp_sgd=DPSGDSettings(noise_multiplier=1.0, delta=1e-5))
    assert planned_epsilon(none, uses_dp_sgd=False) == 0.0  # no noise, no guarantee, nothing claimed
    assert planned_epsilon(lap, uses_dp_sgd=False) == 0.5
    assert planned_epsilon(lap, uses_dp_sgd=True) == 3.5
    assert planned_epsilon(by_noise, uses_dp_sgd=True, dp_sgd_epsilon=2.0) == 2.5
    with pytest.raises(PrivacyError, match="accountant"):
        planned_epsilon(by_noise, uses_dp_sgd=True)
    with pytest.raises(PrivacyError, match="no dp_sgd"):
        planned_epsilon(none, uses_dp_sgd=True)
    assert planned_delta(lap, uses_dp_sgd=True) == 1e-5
    assert planned_delta(by_noise, uses_dp_sgd=True) == pytest.approx(1.1e-5)
    assert planned_delta(by_noise, uses_dp_sgd=False) == 1e-6


def test_min_cohort() -> None:
    assert check_cohort(50, 50) and check_cohort(51, 50)
    assert not check_cohort(49, 50) and not check_cohort(0, 1)
