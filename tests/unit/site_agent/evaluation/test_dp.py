from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from protos.views import TaskStatus
from site_agent.data.toy import make_toy_dataset
from site_agent.errors import EvaluationError
from site_agent.evaluation.dp import attach_dp, noise_seed, parse_dp
from site_agent.evaluation.errors import TrainingIntegrityError
from site_agent.evaluation.integrity import check_dp_modules, lora_parameters
from site_agent.evaluation.lora_data import collate, encode_batch
from site_agent.evaluation.lora_train import (
    TrainConfig,
    load_model,
    load_tokenizer,
    row_losses,
    run_lora,
    train,
    with_lora,
)


@pytest.fixture(scope="module")
def rows_and_tok(tiny_model: Path) -> tuple[list[Any], Any]:
    tok = load_tokenizer(tiny_model)
    batch, _ = make_toy_dataset(40, seed=3, noise_rate=0.0)
    return encode_batch(tok, batch, 96), tok


def _lora_model(folder: Path, cfg: TrainConfig) -> Any:
    return with_lora(load_model(folder, "float32", "cpu"), cfg)


def test_every_dp_step_changes_every_lora_tensor_and_never_a_base_weight(tiny_model: Path, rows_and_tok: Any) -> None:
    rows, tok = rows_and_tok
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, seq_len=96)
    model = _lora_model(tiny_model, cfg)
    named = dict(model.named_parameters())
    lora = {n for n in named if "lora_" in n}
    base0 = {n: p.detach().clone() for n, p in named.items() if n not in lora}
    prev = {n: named[n].detach().clone() for n in lora}
    seen: list[int] = []

    def check(step: int, m: Any) -> None:
        now = dict(m.named_parameters())
        assert all(not now[n].detach().equal(prev[n]) for n in lora), f"a LoRA tensor did not move at step {step}"
        assert all(now[n].detach().equal(base0[n]) for n in base0), f"a base weight moved at step {step}"
        prev.update({n: now[n].detach().clone() for n in lora})
        seen.append(step)

    stats = train(model, rows, cfg, tok.pad_token_id, dp=parse_dp({"noise_multiplier": 0.8}), dp_seed=11,
                  on_step=check)
    assert seen == list(range(6)) and len(lora) > 0 and len(base0) > 0
    assert stats.epsilon > 0 and stats.noise_multiplier == 0.8


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_per_sample_gradients_match_one_by_one_backward(tiny_model: Path, rows_and_tok: Any) -> None:
    """The hooks on peft's LoRA layers give each row exactly its own gradient (padding included)."""
    import torch
    from opacus.grad_sample import GradSampleModule

    rows, tok = rows_and_tok
    cfg = TrainConfig(lora_dropout=0.0)
    model = _lora_model(tiny_model, cfg)
    params = lora_parameters(model)
    torch.manual_seed(0)
    with torch.no_grad():  # B = 0 at init would make every gradient of A zero: a weak check
        for p in params:
            p.normal_(0, 0.05)
    batch = [rows[0], rows[5], rows[9]]
    individual = []
    for row in batch:
        ids, labels, mask = collate(torch, [row], tok.pad_token_id)
        grads = torch.autograd.grad(row_losses(model, ids, labels, mask).mean(), params)
        individual.append(grads)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    check_dp_modules(gsm)
    ids, labels, mask = collate(torch, batch, tok.pad_token_id)
    row_losses(gsm, ids, labels, mask).mean().backward()
    for k, p in enumerate(params):
        assert p.grad_sample.shape == (3, *p.shape)
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], individual[i][k], rtol=1e-4, atol=1e-6)
    gsm.remove_hooks()


def test_target_epsilon_is_met_and_reported(tiny_model: Path, rows_and_tok: Any) -> None:
    rows, tok = rows_and_tok
    cfg = TrainConfig(steps=5, batch_size=4, seq_len=96)
    dp = parse_dp({"target_epsilon": 2.0, "delta": 1e-4, "accountant": "rdp"})
    solved = train(_lora_model(tiny_model, cfg), rows, cfg, tok.pad_token_id, dp=dp, dp_seed=1)
    assert 1.5 < solved.epsilon <= 2.0 + 1e-6 and solved.noise_multiplier > 0
    # The same noise under the PRV accountant (the default): a tighter bound for the same run.
    prv = parse_dp({"noise_multiplier": solved.noise_multiplier, "delta": 1e-4})
    fixed = train(_lora_model(tiny_model, cfg), rows, cfg, tok.pad_token_id, dp=prv, dp_seed=1)
    assert 0.5 < fixed.epsilon <= solved.epsilon + 1e-6


def test_dp_runs_repeat_with_the_same_secret_seed_only(tiny_model: Path) -> None:
    train_batch, _ = make_toy_dataset(30, seed=4, noise_rate=0.0)
    held, _ = make_toy_dataset(4, seed=5, noise_rate=0.0)
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=64)
    dp = parse_dp({"noise_multiplier": 1.0})
    a = run_lora(tiny_model, cfg, train_batch, held, dp=dp, dp_seed=7)
    assert run_lora(tiny_model, cfg, train_batch, held, dp=dp, dp_seed=7).losses == a.losses
    assert run_lora(tiny_model, cfg, train_batch, held, dp=dp, dp_seed=8).losses != a.losses


def test_guard_catches_a_step_that_does_not_update_lora(tiny_model: Path, rows_and_tok: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    rows, tok = rows_and_tok
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=96)
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)  # a silently lost update
    with pytest.raises(TrainingIntegrityError, match="0 of .* LoRA tensors changed") as e:
        train(_lora_model(tiny_model, cfg), rows, cfg, tok.pad_token_id, dp=parse_dp({"noise_multiplier": 1.0}))
    assert e.value.status is TaskStatus.FAILED_INTERNAL


def test_guard_refuses_trainable_base_weights_and_unhooked_modules(tiny_model: Path) -> None:
    import torch
    from opacus.grad_sample import GradSampleModule

    model = _lora_model(tiny_model, TrainConfig())
    next(p for n, p in model.named_parameters() if "embed" in n).requires_grad_(True)
    with pytest.raises(TrainingIntegrityError, match="1 other trainable"):
        lora_parameters(model)
    split = _lora_model(tiny_model, TrainConfig())
    layer = next(m for n, m in split.named_modules() if n.endswith("lora_A.default"))
    layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight, device="meta"))
    with pytest.raises(TrainingIntegrityError, match="one device"):  # opacus#820: a model split across devices
        lora_parameters(split)

    class Scale(torch.nn.Module):  # no exact Opacus grad sampler: would fall back to functorch
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x: Any) -> Any:
            return x * self.w

    with pytest.raises(TrainingIntegrityError, match="lack an exact per-sample gradient"):
        check_dp_modules(GradSampleModule(torch.nn.Sequential(Scale())))


def test_dp_config_and_noise_secret(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="exactly one of target_epsilon and noise_multiplier"):
        parse_dp({"max_grad_norm": 1.0})
    with pytest.raises(EvaluationError, match="dp option 'delta'"):
        parse_dp({"noise_multiplier": 1.0, "delta": 2.0})
    with pytest.raises(EvaluationError, match="dp option 'clip'"):
        parse_dp({"noise_multiplier": 1.0, "clip": 1.0})
    seed = noise_seed(tmp_path, 3, "processed", "abc")
    secret = tmp_path / "dp-noise.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) == 32
    assert noise_seed(tmp_path, 3, "processed", "abc") == seed
    assert len({seed, noise_seed(tmp_path, 3, "baseline", "abc"), noise_seed(tmp_path, 4, "processed", "abc"),
                noise_seed(tmp_path, 3, "processed", "abd")}) == 4
    other = tmp_path / "other"
    assert noise_seed(other, 3, "processed", "abc") != seed  # another site's secret
    secret.write_bytes(b"short")
    with pytest.raises(EvaluationError, match="damaged"):
        noise_seed(tmp_path, 3, "processed", "abc")


def test_unreachable_target_epsilon_is_one_clear_error(tiny_model: Path) -> None:
    import torch

    model = _lora_model(tiny_model, TrainConfig())
    opt = torch.optim.AdamW(lora_parameters(model))
    with pytest.raises(EvaluationError, match="cannot be reached"):
        attach_dp(model, opt, parse_dp({"target_epsilon": 1e-3, "accountant": "rdp"}),  # type: ignore[arg-type]
                  sample_rate=1.0, steps=1000, expected_batch=4, seed=0)


def test_bfloat16_base_with_float32_adapters_under_dp(tiny_model: Path, rows_and_tok: Any) -> None:
    """What a GPU site (or a CPU with native bf16) runs: the guards hold for a bf16 base too."""
    import torch

    rows, tok = rows_and_tok
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=96)
    model = with_lora(load_model(tiny_model, "bfloat16", "cpu"), cfg)
    dtypes = {("lora_" in n, p.dtype) for n, p in model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    stats = train(model, rows, cfg, tok.pad_token_id, dp=parse_dp({"noise_multiplier": 1.0}), dp_seed=3)
    assert stats.steps == 2 and stats.epsilon > 0
