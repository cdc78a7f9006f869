"""The ledger refuses over-budget tasks before any work, debits a task once, and keeps it all on disk."""

import shutil
from pathlib import Path

import pytest

from protos.views import TaskStatus
from site_agent.privacy import PrivacyError, PrivacyLedger, PrivacySettings, check_cohort, planned_epsilon

DAY = 86_400.0
SEARCH = PrivacySettings(budget_scope="search", total_epsilon=3.0, mechanism="laplace", release_epsilon=1.0)
WINDOW = SEARCH.model_copy(update={"budget_scope": "window", "window_days": 30})


def run_task(ledger: PrivacyLedger, task_id: str, scope: str, raw: float, now: float = 0.0) -> float | None:
    """What the agent does, with a counter of the work actually done."""
    decision = ledger.reserve(task_id, scope, planned_epsilon(ledger.settings, uses_dp_sgd=False), now=now)
    if not decision.ok:
        return None
    WORK.append(task_id)
    ledger.commit(task_id, decision.epsilon, now=now)
    return ledger.release(task_id, raw)


WORK: list[str] = []


@pytest.fixture(autouse=True)
def _clear_work() -> None:
    WORK.clear()


def test_an_over_budget_task_is_refused_before_any_work(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.db", SEARCH) as ledger:
        for i in range(3):
            assert run_task(ledger, f"t{i}", "s1", 0.2) is not None
        assert ledger.remaining("s1") == 0.0 and ledger.spent("s1") == pytest.approx(3.0)
        decision = ledger.reserve("t3", "s1", 1.0)
        assert not decision.ok and decision.status is TaskStatus.REJECTED_BUDGET
        assert decision.remaining == 0.0 and decision.reason is not None and "budget" in decision.reason
        assert run_task(ledger, "t4", "s1", 0.2) is None and WORK == ["t0", "t1", "t2"]
        assert ledger.state("t3") is None  # a refusal debits nothing
        # Search scope: another search has its own budget.
        assert ledger.reserve("u0", "s2", 1.0).ok and ledger.remaining("s2") == pytest.approx(2.0)


def test_a_partial_fit_is_refused_but_an_exact_fit_is_not(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.db", SEARCH) as ledger:
        for i in range(10):  # 10 x 0.3 sums to 2.9999999999999996 or so in floats
            assert ledger.reserve(f"t{i}", "s", 0.3).ok
        assert not ledger.reserve("big", "s", 0.1).ok
    with PrivacyLedger(tmp_path / "other.db", SEARCH) as ledger:
        assert ledger.reserve("a", "s", 2.5).ok and not ledger.reserve("b", "s", 0.6).ok
        assert ledger.reserve("c", "s", 0.5).ok


def test_spending_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with PrivacyLedger(path, SEARCH) as ledger:
        first = run_task(ledger, "t0", "s1", 0.2)
        ledger.reserve("t1", "s1", 1.0)  # reserved, never committed: the site died mid-task
    with PrivacyLedger(path, SEARCH) as ledger:
        assert ledger.spent("s1") == pytest.approx(2.0)  # an open reservation still counts in full
        assert ledger.release_of("t0") == first and ledger.release_of("t1") is None
        state = ledger.state("t1")
        assert state is not None and not state.committed and state.epsilon == 1.0


def test_a_replayed_task_is_debited_once_and_gets_the_same_value(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with PrivacyLedger(path, SEARCH) as ledger:
        first = ledger.reserve("t0", "s1", 1.0)
        ledger.commit("t0", 1.0)
        released = ledger.release("t0", 0.37)
    with PrivacyLedger(path, SEARCH) as ledger:  # replayed after a restart
        again = ledger.reserve("t0", "s1", 1.0)
        assert again.ok and again.replay and not first.replay
        state = ledger.commit("t0", 1.0)
        assert state.committed and state.spent == pytest.approx(1.0) and state.remaining == pytest.approx(2.0)
        assert ledger.release("t0", 0.99) == released  # stored value, no new noise drawn
        assert ledger.release_of("t0") == released


def test_a_crash_between_commit_and_release_replays_the_same_noise(tmp_path: Path) -> None:
    path, twin = tmp_path / "ledger.db", tmp_path / "twin.db"
    with PrivacyLedger(path, SEARCH) as ledger:
        ledger.reserve("t0", "s", 1.0)
        ledger.commit("t0", 1.0)  # the site dies here, before releasing
    shutil.copyfile(path, twin)  # two restarts of the same site from the same disk state
    with PrivacyLedger(path, SEARCH) as a, PrivacyLedger(twin, SEARCH) as b:
        assert a.release("t0", 0.37) == b.release("t0", 0.37)


def test_a_new_ledger_file_draws_new_noise(tmp_path: Path) -> None:
    values = []
    for name in ("one.db", "two.db"):
        with PrivacyLedger(tmp_path / name, SEARCH) as ledger:
            ledger.reserve("t0", "s", 1.0)
            ledger.commit("t0", 1.0)
            values.append(ledger.release("t0", 0.37))
    assert values[0] != values[1]  # the secret, not the task id alone, seeds the noise


def test_the_noise_seed_is_kept_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with PrivacyLedger(path, SEARCH) as ledger:
        draws = ledger.rng_for("t0").random(3).tolist()
    with PrivacyLedger(path, SEARCH) as ledger:
        assert ledger.rng_for("t0").random(3).tolist() == draws


def test_window_scope_shares_one_budget_and_expires_old_spending(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.db", WINDOW) as ledger:
        assert run_task(ledger, "a", "search-1", 0.1, now=0.0) is not None
        assert run_task(ledger, "b", "search-2", 0.1, now=10 * DAY) is not None
        assert run_task(ledger, "c", "search-3", 0.1, now=20 * DAY) is not None
        assert not ledger.reserve("d", "search-4", 1.0, now=25 * DAY).ok  # new searches do not reset it
        assert ledger.remaining("any", now=30 * DAY + 1) == pytest.approx(1.0)  # "a" has left the window
        assert ledger.reserve("d", "search-4", 1.0, now=30 * DAY + 1).ok
        assert ledger.remaining("any", now=60 * DAY) == pytest.approx(2.0)  # "d" is 30 days less a second old
        assert ledger.remaining("any", now=100 * DAY) == pytest.approx(3.0)


def test_commit_records_the_actual_spend_once(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.db", SEARCH) as ledger:
        ledger.reserve("t0", "s", 2.0, delta=1e-5)
        state = ledger.commit("t0", 1.25, delta_spent=0.0)
        assert state.epsilon == 1.25 and state.reserved == 2.0 and state.remaining == pytest.approx(1.75)
        assert ledger.commit("t0", 2.0).epsilon == 1.25  # the first commit wins
        assert ledger.delta_spent("s") == 0.0
        ledger.reserve("t1", "s", 1.0, delta=1e-6)
        assert ledger.delta_spent("s") == pytest.approx(1e-6)  # deltas add up too


def test_a_cohort_refusal_after_reserve_debits_nothing(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.db", SEARCH) as ledger:
        assert ledger.reserve("t0", "s", 1.0).ok
        assert not check_cohort(12, SEARCH.min_cohort)  # the pipeline left too few rows
        state = ledger.commit("t0", 0.0)
        assert state.epsilon == 0.0 and state.remaining == pytest.approx(3.0)
        assert ledger.release_of("t0") is None


def test_calls_out_of_order_are_refused(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.db", SEARCH) as ledger:
        with pytest.raises(PrivacyError, match="never reserved"):
            ledger.commit("ghost", 1.0)
        with pytest.raises(PrivacyError, match="never reserved"):
            ledger.release("ghost", 0.1)
        ledger.reserve("t0", "s", 1.0)
        with pytest.raises(PrivacyError, match="commit before release"):
            ledger.release("t0", 0.1)  # debited before released, always
        with pytest.raises(PrivacyError, match="finite"):
            ledger.reserve("t1", "s", float("nan"))
        with pytest.raises(PrivacyError, match=">= 0"):
            ledger.commit("t0", -1.0)
        ledger.commit("t0", 1.0)
        with pytest.raises(PrivacyError, match="finite"):
            ledger.release("t0", float("inf"))
        assert ledger.release_of("t0") is None  # the failed release stored nothing


def test_an_unopenable_ledger_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").mkdir()  # a folder where the file should be
    with pytest.raises(PrivacyError, match="cannot open"):
        PrivacyLedger(tmp_path / "ledger.db", SEARCH)
