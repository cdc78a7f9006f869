"""Federated LoRA training on Flower's deployment engine, on 127.0.0.1, as separate processes: the
coordinator (`autodp train federated`: SuperLink with TLS and SuperNode authentication, its own
ServerApp) and two sites (`python -m site_agent.federated`: SuperNode, their own ClientApp), a tiny Llama
built from a config, toy data processed by a recipe, three rounds. One site trains with DP-SGD.

Checked: the averaged adapter lowers each site's held-out loss below the base model's; the three audit
logs verify, each site's log holds one entry per exchange per round and matches the coordinator's
(cross-check); the site's copy of the final adapter is the coordinator's; the DP site's ledger holds one
entry per round; nothing the coordinator wrote holds a training row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from protos.audit import cross_check, load_verify_key, read_log, verify
from protos.federated import ExchangeKind, adapter_digest, pb
from protos.flower_procs import free_port
from protos.recipe import recipe_from_strategy, write_recipe
from protos.tls import init_ca, issue_coordinator, issue_site
from protos.views import OperatorCall, Strategy
from site_agent.data.loading import save_pairs
from site_agent.data.toy import make_toy_dataset
from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model

SITES = ("hospital-a", "hospital-b")
ROUNDS = 3


def _site(tmp: Path, certs: Path, site: str, seed: int, superlink: str, model: Path, dp: bool) -> Path:
    d = tmp / site
    d.mkdir()
    data, labels = make_toy_dataset(160, seed=seed, noise_rate=0.3)
    save_pairs({**data, "label": labels}, d / "train.jsonl")
    held_out, _ = make_toy_dataset(24, seed=seed + 100, noise_rate=0.0)
    save_pairs(held_out, d / "eval.jsonl")
    (d / "policy.yaml").write_text(yaml.safe_dump(
        {"allowed_operators": ["remove_markup", "normalize_text", "exact_dedup", "length_filter"]}))
    privacy: dict[str, object] = {"min_cohort": 20, "total_epsilon": 100.0}
    if dp:
        privacy["dp_sgd"] = {"noise_multiplier": 0.3, "max_grad_norm": 1.0, "delta": 1e-4, "accountant": "rdp"}
    cfg = {
        "site_id": site, "state_dir": "state", "policy": "policy.yaml",
        "audit_key": str(certs / f"site-{site}.audit.key"),
        "tls": {"cert": str(certs / f"site-{site}.crt"), "key": str(certs / f"site-{site}.key"),
                "ca": str(certs / "ca.crt")},
        "data": {"path": "train.jsonl"}, "eval_data": {"path": "eval.jsonl"},
        "embedder": None, "screening": None, "privacy": privacy,
        "federated_training": {"enabled": True, "superlink": superlink, "model_path": str(model), "threads": 1,
                               "device": "cpu", "dtype": "float32", "dp_sgd": dp, "timeout_s": 300},
    }
    (d / "site.yaml").write_text(yaml.safe_dump(cfg))
    return d


def autodp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protos.cli", *args], capture_output=True, text=True, timeout=120,
                          env=_env())


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_sites_train_an_adapter_that_helps_both(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    init_ca(certs)
    issue_coordinator(certs)
    for s in SITES:
        issue_site(certs, s)
    clean, _ = make_toy_dataset(300, seed=7, noise_rate=0.0)
    model = build_tiny_model(tmp_path / "tiny-llama", clean["instruction"] + clean["answer"])
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    recipe = tmp_path / "search.recipe.yaml"
    write_recipe(recipe, recipe_from_strategy(
        Strategy(calls=(OperatorCall.of("remove_markup"), OperatorCall.of("normalize_text"),
                        OperatorCall.of("exact_dedup"))), search_id="search-1", score=0.01, use_screening=False))
    sites = {s: _site(tmp_path, certs, s, seed, superlink, model, dp=(s == "hospital-b"))
             for seed, s in enumerate(SITES, start=1)}
    coord = {"state_dir": str(tmp_path / "coordinator-state"), "audit_key": str(certs / "coordinator.audit.key"),
             "tls": {"cert": str(certs / "coordinator.crt"), "key": str(certs / "coordinator.key"),
                     "ca": str(certs / "ca.crt")}, "sites": list(SITES)}
    (tmp_path / "coordinator.yaml").write_text(yaml.safe_dump(coord))
    out = tmp_path / "adapter"

    started = time.monotonic()
    env = _env()
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("coordinator", *SITES)}
    procs = {"coordinator": subprocess.Popen(
        [sys.executable, "-m", "protos.cli", "train", "federated", "--config", str(tmp_path / "coordinator.yaml"),
         "--recipe", str(recipe), "--listen", superlink, "--rounds", str(ROUNDS), "--local-steps", "12",
         "--lr", "0.01", "--seq-len", "64", "--batch-size", "8", "--output", str(out), "--round-timeout", "240",
         "--connect-timeout", "240"], stdout=logs["coordinator"], stderr=subprocess.STDOUT, env=env)}
    for s, d in sites.items():
        procs[s] = subprocess.Popen([sys.executable, "-m", "site_agent.federated", "--config", str(d / "site.yaml"),
                                     "--recipe", str(recipe)], stdout=logs[s], stderr=subprocess.STDOUT, env=env)
    try:
        codes = {name: p.wait(timeout=280) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        for f in logs.values():
            f.close()
    text = {name: (tmp_path / f"{name}.log").read_text()[-3000:] for name in procs}
    assert all(c == 0 for c in codes.values()), (codes, text)
    print(f"federated run: {time.monotonic() - started:.1f} s")

    summary = json.loads((out / "federated-training.json").read_text())
    assert summary["rounds"] == ROUNDS and sorted(summary["sites"]) == list(SITES)
    assert summary["final_delivery"] == dict.fromkeys(SITES, "acknowledged")
    for r in summary["per_round"]:
        assert set(r["sites"]) == set(SITES) and all("examples" in v and "left_out" not in v
                                                     for v in r["sites"].values()), r

    from safetensors.numpy import load_file

    final = load_file(str(out / "adapter_model.safetensors"))
    assert adapter_digest(final).hex == summary["final_sha256"]
    coord_log = tmp_path / "coordinator-state" / "federated-audit.log"
    assert verify(coord_log, load_verify_key(certs / "coordinator.audit.pub")).side == "coordinator"
    for s, d in sites.items():  # as an auditor would, with the site's pinned key
        checked = autodp("audit", "verify", str(d / "state" / "federated-audit.log"), "--key",
                         str(certs / f"site-{s}.audit.pub"))
        assert checked.returncode == 0 and checked.stdout.startswith("OK"), checked.stdout + checked.stderr
    for s, d in sites.items():
        report = json.loads((d / "state" / "federated" / "federated-report.json").read_text())
        # the averaged adapter is better on this site's held-out set than the base model
        assert report["final_loss"] < report["base_loss"], report
        assert report["rounds_trained"] == ROUNDS and report["final_sha256"] == summary["final_sha256"]
        site_log = d / "state" / "federated-audit.log"
        assert verify(site_log, load_verify_key(certs / f"site-{s}.audit.pub")).party == s
        entries = [e for e in read_log(site_log).entries if e.kind == "message"]
        records = [(e.direction, pb.AdapterExchange.FromString(e.payload)) for e in entries]
        kinds = [(direction, ExchangeKind(r.kind).name, r.round) for direction, r in records]
        expected = [x for n in range(1, ROUNDS + 1)
                    for x in (("in", "GLOBAL_ADAPTER", n), ("out", "ADAPTER_UPDATE", n))]
        assert kinds == [*expected, ("in", "FINAL_ADAPTER", ROUNDS), ("out", "FINAL_ACK", ROUNDS)]
        matched = cross_check(site_log, coord_log)  # every update sent was received, in order, and back
        assert matched.ok and matched.site_to_coordinator == ROUNDS + 1 and matched.coordinator_to_site == ROUNDS + 1
        eps = [r.epsilon for d_, r in records if r.kind == ExchangeKind.ADAPTER_UPDATE]
        assert (all(e > 0 for e in eps) and report["dp_sgd"]) if s == "hospital-b" else eps == [0.0] * ROUNDS

    import sqlite3

    with sqlite3.connect(sites["hospital-b"] / "state" / "privacy.db") as db:
        rows = db.execute("SELECT scope_id, spent FROM entries ORDER BY task_id").fetchall()
    assert len(rows) == ROUNDS and all(scope == "search-1" and spent > 0 for scope, spent in rows)

    # no training row reached anything the coordinator wrote
    train_rows = (sites["hospital-a"] / "train.jsonl").read_text(encoding="utf-8").splitlines()
    written = b"".join(p.read_bytes() for p in (tmp_path / "coordinator-state").rglob("*") if p.is_file())
    written += b"".join(p.read_bytes() for p in out.iterdir())
    for line in train_rows[:40]:
        row = json.loads(line)
        for t in (row["instruction"], row["answer"]):
            if len(t) >= 12:
                assert t.encode() not in written
