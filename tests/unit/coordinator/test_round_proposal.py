"""How each round was proposed: the meta-agent's logs summed per round by the search loop, stored with the round
(a v1 store migrates), and shown in the report (per round ``proposal``, per strategy ``origin``)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from coordinator.agent.proposer import ProposalLog
from coordinator.config import SearchConfig
from coordinator.errors import StoreError
from coordinator.proposers import ScoredStrategy
from coordinator.report import build_outcome
from coordinator.report_html import render_html
from coordinator.search import _propose_valid, run_search
from coordinator.sqlite_store import SCHEMA_VERSION, SQLiteStore
from coordinator.store import MAX_PROBLEMS, RoundProposal, SiteRecord
from protos.serde import encode, to_pb
from protos.views import OperatorCall, OperatorSpec, SizeBucket, Strategy
from tests.fakes.openai_server import FakeOpenAIServer
from tests.unit.coordinator.test_search import CATALOG, SimSite, cfg, make_service

# the v1 store, as the coordinator before schema version 2 created it
V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE sites (
    site_id TEXT PRIMARY KEY, hello BLOB NOT NULL, last_seen REAL NOT NULL, tasks_done INTEGER NOT NULL);
CREATE TABLE searches (
    search_id TEXT PRIMARY KEY, config_json TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE rounds (search_id TEXT NOT NULL, round_no INTEGER NOT NULL, PRIMARY KEY (search_id, round_no));
CREATE TABLE round_strategies (
    search_id TEXT NOT NULL, round_no INTEGER NOT NULL, idx INTEGER NOT NULL, strategy BLOB NOT NULL,
    PRIMARY KEY (search_id, round_no, idx));
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY, search_id TEXT NOT NULL, site_id TEXT NOT NULL, round_no INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL, lease_expires REAL,
    deadline REAL NOT NULL, created REAL NOT NULL, failure TEXT, task BLOB NOT NULL, result BLOB,
    result_at REAL, seq INTEGER NOT NULL);
CREATE INDEX tasks_by_site ON tasks (site_id, state, created, seq);
CREATE INDEX tasks_by_search ON tasks (search_id, round_no, created, seq);
CREATE INDEX tasks_by_state ON tasks (state, deadline);
"""

S1 = Strategy(calls=(OperatorCall.of("alpha", level=1),))
S2 = Strategy(calls=(OperatorCall.of("beta", level=2), OperatorCall.of("gamma", level=0)))
PROPOSAL = RoundProposal(mode="write", prompt_version="v-test", propose_calls=1, llm_calls=2, asked=2, from_llm=1,
                         filled=1, candidates=0, problems=("2 strategies offered, 1 kept",), origins=("model", "fill"))


# ---------------------------------------------------------------- store

def test_a_v1_store_migrates_and_keeps_its_rounds(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    c = sqlite3.connect(path)
    c.executescript(V1_SCHEMA)
    c.execute("INSERT INTO schema_version (version) VALUES (1)")
    c.execute("INSERT INTO searches VALUES ('old', '{\"proposer\": \"random\"}', 'running', '', 1.0)")
    c.execute("INSERT INTO rounds VALUES ('old', 1)")
    c.executemany("INSERT INTO round_strategies VALUES ('old', 1, ?, ?)",
                  [(i, encode(to_pb(s))) for i, s in enumerate((S1, S2))])
    c.commit()
    c.close()

    with SQLiteStore(path) as store:
        assert store.get_rounds("old") == [(1, [S1, S2])]
        assert store.get_round_proposals("old") == {}
        store.add_round("old", 2, [S2], PROPOSAL)  # the new column takes records
        assert build_outcome(store, "old").rounds()[0]["proposal"] is None
    c = sqlite3.connect(path)
    assert c.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(2,)]
    assert "proposal" in [r[1] for r in c.execute("PRAGMA table_info(rounds)")]
    c.close()
    with SQLiteStore(path) as store:  # opening the migrated store again changes nothing
        assert store.get_rounds("old") == [(1, [S1, S2]), (2, [S2])]
        assert store.get_round_proposals("old") == {2: PROPOSAL}


def test_proposals_round_trip_and_the_first_stored_stays(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "s.db") as store:
        store.create_search("s", "{}", 0.0)
        store.add_round("s", 1, [S1, S2], PROPOSAL)
        store.add_round("s", 2, [S1])  # a round without a record
        store.add_round("s", 1, [S2], PROPOSAL.model_copy(update={"llm_calls": 9}))  # replayed: unchanged
        assert store.get_round_proposals("s") == {1: PROPOSAL}
        assert store.get_round_proposals("nope") == {}
    c = sqlite3.connect(tmp_path / "s.db")
    stored = json.loads(c.execute("SELECT proposal FROM rounds WHERE round_no = 1").fetchone()[0])
    assert set(stored) == set(RoundProposal.model_fields)  # counts, enums, version, summaries: nothing else
    c.execute("UPDATE rounds SET proposal = '{\"mode\": \"sing\"}' WHERE round_no = 1")
    c.commit()
    c.close()
    with SQLiteStore(tmp_path / "s.db") as store, pytest.raises(StoreError, match="round 1 does not decode"):
        store.get_round_proposals("s")


# ---------------------------------------------------------------- the loop sums a round's logs

class LoggingProposer:
    """Sets ``last`` after every call as LLMProposer does; answers from a script, one list per call."""

    name = "llm"

    def __init__(self, script: Sequence[tuple[list[Strategy], ProposalLog]]) -> None:
        self.script = list(script)
        self.last: ProposalLog | None = None

    def propose(self, round_no: int, k: int, catalog: Sequence[OperatorSpec],
                history: Sequence[ScoredStrategy]) -> list[Strategy]:
        out, log = self.script.pop(0)
        self.last = log
        return out


def _site() -> SiteRecord:
    return SiteRecord("a", "0.1.0", CATALOG, SizeBucket.UNDER_1K, 0.0, 0)


def _log(from_llm: int, filled: int, keys: Sequence[Strategy] = (), *, problems: tuple[str, ...] = ("p",),
         round_no: int = 1) -> ProposalLog:
    return ProposalLog(round_no=round_no, asked=from_llm + filled, llm_calls=1, from_llm=from_llm, filled=filled,
                       problems=problems, from_model_keys=tuple(s.key for s in keys))


def test_the_loop_sums_a_rounds_calls_and_tells_where_each_kept_strategy_came_from() -> None:
    bad = Strategy(calls=(OperatorCall.of("omega"),))  # no site has it: dropped by the loop
    s3 = Strategy(calls=(OperatorCall.of("delta", level=4),))
    proposer = LoggingProposer([([S1, bad, S2], _log(2, 1, [S1, bad], problems=("first",) * 15)),
                                ([S1, s3], _log(1, 1, [S1], problems=("second",) * 15))])
    chosen, proposal = _propose_valid(proposer, 1, cfg(strategies_per_round=3), [_site()], [])
    assert chosen == [S1, S2, s3]
    assert proposal is not None and proposal.origins == ("model", "fill", "fill")
    assert (proposal.propose_calls, proposal.llm_calls, proposal.asked, proposal.from_llm, proposal.filled) == \
        (2, 2, 5, 3, 2)
    assert (proposal.kept_from_model, proposal.kept_from_fill, proposal.mode) == (1, 2, "write")
    assert proposal.problems == ("first",) * 15 + ("second",) * (MAX_PROBLEMS - 15)


def test_a_log_without_keys_or_of_another_round_tells_nothing() -> None:
    old_style = LoggingProposer([([S1, S2], _log(1, 1))])  # from_llm > 0 but no keys: origins unknown
    _, proposal = _propose_valid(old_style, 1, cfg(strategies_per_round=2), [_site()], [])
    assert proposal is not None and proposal.origins == (None, None) and proposal.from_llm == 1
    stale = LoggingProposer([([S1, S2], _log(2, 0, [S1, S2], round_no=7))])
    assert _propose_valid(stale, 1, cfg(strategies_per_round=2), [_site()], [])[1] is None


# ---------------------------------------------------------------- whole searches

@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(model="meta-model") as s:
        yield s


def _two_of_three(served: list[list[str]]) -> Any:
    """The model gives 2 new valid strategies per answer, whatever it is asked for: the fill adds the rest."""
    lock = threading.Lock()

    def handler(body: dict[str, Any]) -> str:
        with lock:
            n = len(served)
            strategies = [[{"op": "beta", "params": {"level": n % 6}}, {"op": op, "params": {"level": n // 6}}]
                          for op in ("alpha", "gamma")]
            served.append([Strategy(calls=tuple(OperatorCall.of(c["op"], **c["params"]) for c in s)).key
                           for s in strategies])
        return json.dumps({"strategies": strategies})

    return handler


def _llm_cfg(server: FakeOpenAIServer, mode: str = "write", **kw: Any) -> SearchConfig:
    agent = {"base_url": server.base_url, "model": "meta-model", "backoff_s": 0.01, "max_reasks": 0,
             "fill": "random", "mode": mode}
    return cfg(proposer="llm", agent=agent, **kw)


def _sites(service: Any, stop: threading.Event) -> list[SimSite]:
    sites = [SimSite(service, s, stop, Counter()) for s in ("a", "b")]
    for site in sites:
        site.start()
    return sites


def test_the_report_shows_each_rounds_proposal_and_each_strategys_origin(tmp_path: Path,
                                                                        server: FakeOpenAIServer) -> None:
    served: list[list[str]] = []
    server.handler = _two_of_three(served)
    service, stop = make_service(tmp_path / "s.db"), threading.Event()
    _sites(service, stop)
    outcome = run_search(service, _llm_cfg(server), threading.Event())
    stop.set()
    data = outcome.to_json()
    assert len(data["rounds"]) == 3 and len(served) == 3
    for r in data["rounds"]:
        assert r["proposal"] == {"mode": "write", "prompt_version": r["proposal"]["prompt_version"],
                                 "propose_calls": 1, "llm_calls": 1, "asked": 3, "from_llm": 2, "filled": 1,
                                 "candidates": 0, "kept_from_model": 2, "kept_from_fill": 1,
                                 "problems": [r["proposal"]["problems"][0]]}
        assert r["proposal"]["prompt_version"] and set(r) >= {"round", "proposed", "evaluated", "best_so_far"}
        mine = [s for s in data["strategies"] if s["round"] == r["round"]]
        assert [s["origin"] for s in mine] == ["model", "model", "fill"]
        assert [s["key"] for s in mine[:2]] == served[r["round"] - 1]
    page = render_html(data)
    assert '<th title="from model / fill">origin</th>' in page and "<td>fill</td>" in page
    assert "6 strategies from the model, 3 from the fill proposer (mode write)" in page


def test_choose_mode_records_the_models_picks(tmp_path: Path, server: FakeOpenAIServer) -> None:
    server.handler = lambda body: json.dumps({"choices": [2]})  # one pick of 3: the candidate order fills 2
    service, stop = make_service(tmp_path / "s.db"), threading.Event()
    _sites(service, stop)
    data = run_search(service, _llm_cfg(server, "choose", rounds=2), threading.Event()).to_json()
    stop.set()
    for r in data["rounds"]:
        p = r["proposal"]
        assert (p["mode"], p["llm_calls"], p["from_llm"], p["filled"], p["kept_from_model"]) == ("choose", 1, 1, 2, 1)
        assert 3 < p["candidates"] <= 9
        assert [s["origin"] for s in data["strategies"] if s["round"] == r["round"]] == ["model", "fill", "fill"]


def test_a_resumed_search_reports_the_same_proposals(tmp_path: Path, server: FakeOpenAIServer) -> None:
    served: list[list[str]] = []
    server.handler = _two_of_three(served)
    first, stop1, search_stop = make_service(tmp_path / "s.db"), threading.Event(), threading.Event()
    sites = _sites(first, stop1)

    def progress(round_no: int, done: int, total: int) -> None:
        if round_no == 2 and done >= 1:
            search_stop.set()  # "kill" mid-round 2, after round 2 was proposed and stored

    partial = run_search(first, _llm_cfg(server), search_stop, progress).to_json()
    stop1.set()
    for site in sites:
        site.join(5)
    first.store.close()
    assert [r["proposal"]["kept_from_model"] for r in partial["rounds"]] == [2, 2] and len(served) == 2

    with SQLiteStore(tmp_path / "s.db") as reopened:  # the record alone, no search running
        again = build_outcome(reopened, "s1").to_json()
    assert [r["proposal"] for r in again["rounds"]] == [r["proposal"] for r in partial["rounds"]]
    assert [s["origin"] for s in again["strategies"]] == [s["origin"] for s in partial["strategies"]]

    second, stop2 = make_service(tmp_path / "s.db"), threading.Event()
    _sites(second, stop2)
    final = run_search(second, _llm_cfg(server), threading.Event()).to_json()
    stop2.set()
    assert len(served) == 3  # round 2 was not proposed again
    assert [r["proposal"] for r in final["rounds"]][:2] == [r["proposal"] for r in partial["rounds"]]
    assert [s["origin"] for s in final["strategies"]] == ["model", "model", "fill"] * 3


def test_other_proposers_leave_proposal_and_origin_null(tmp_path: Path) -> None:
    service, stop = make_service(tmp_path / "s.db"), threading.Event()
    _sites(service, stop)
    data = run_search(service, cfg(rounds=2, proposer="evolutionary"), threading.Event()).to_json()
    stop.set()
    assert [r["proposal"] for r in data["rounds"]] == [None, None]
    assert {s["origin"] for s in data["strategies"]} == {None}
    assert service.store.get_round_proposals("s1") == {}
    page = render_html(data)
    assert ">origin</th>" not in page and "meta-agent" not in page
