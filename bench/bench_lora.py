"""LoRA training throughput: the evaluator's plain loop against a transformers ``Trainer`` + peft run.

Both train the same LoRA (same model, rank, targets, seed) on the same tokenized rows (answer-only
labels), with the same batch size, AdamW, constant learning rate and number of steps, on CPU in float32.
Each side first runs a short warm-up, then ``--rounds`` measured runs, alternating. Throughput is
non-padding tokens read per second of the training loop (Trainer: from its train-begin to train-end
callbacks, so the set-up around ``train()`` is not charged to it; ours: the loop, per-step update
guards included). Prints tokens/s of each side and the ratio.

    .venv/bin/python bench/bench_lora.py                        # tiny 2-layer Llama built from a config
    .venv/bin/python bench/bench_lora.py --model smollm2 --steps 4 --seq-len 64 --batch 4
    .venv/bin/python bench/bench_lora.py --model /path/to/hf-folder
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the tests' tiny model

from site_agent.data.toy import make_toy_dataset  # noqa: E402
from site_agent.evaluation.lora_data import TokenRow, collate, encode_batch  # noqa: E402
from site_agent.evaluation.lora_train import TrainConfig, load_model, load_tokenizer, train, with_lora  # noqa: E402

__all__ = ["main"]


def _ours(folder: Path, rows: list[TokenRow], cfg: TrainConfig, pad_id: int) -> tuple[int, float]:
    model = with_lora(load_model(folder, "float32", "cpu"), cfg)
    stats = train(model, rows, cfg, pad_id)
    return stats.tokens, stats.seconds


def _trainer(folder: Path, rows: list[TokenRow], cfg: TrainConfig, pad_id: int) -> tuple[int, float]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = with_lora(load_model(folder, "float32", "cpu"), cfg)
    seen = {"tokens": 0}
    clock: dict[str, float] = {}

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # Counted at the forward, not in the collator: the data loader prefetches one batch ahead.
        seen["tokens"] += int(kwargs["attention_mask"].sum())

    def collator(batch: list[TokenRow]) -> dict[str, Any]:
        ids, labels, mask = collate(torch, batch, pad_id)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    model.register_forward_pre_hook(count, with_kwargs=True)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
            lr_scheduler_type="constant", weight_decay=0.0, optim="adamw_torch", logging_strategy="no",
            save_strategy="no", report_to=[], use_cpu=True, seed=cfg.seed, data_seed=cfg.seed,
            dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                callbacks=[Clock()]).train()
    return seen["tokens"], clock["end"] - clock["start"]


def _model(name: str, texts: list[str], tmp: Path) -> Path:
    if name == "tiny":
        from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model

        return build_tiny_model(tmp / "tiny", texts)
    if name == "smollm2":
        from protos.bundled_models import smollm2_folder

        return smollm2_folder()
    return Path(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (built from a config), 'smollm2', or an HF folder")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data, _ = make_toy_dataset(args.rows, seed=0, noise_rate=0.0)
    cfg = TrainConfig(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch, lr=1e-3, lora_dropout=0.0,
                      dtype="float32", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = _model(args.model, data["instruction"] + data["answer"], Path(tmp))
        tok = load_tokenizer(folder)
        rows = encode_batch(tok, data, cfg.seq_len)
        warm = TrainConfig(**{**cfg.__dict__, "steps": 2})
        _ours(folder, rows, warm, tok.pad_token_id)
        _trainer(folder, rows, warm, tok.pad_token_id)
        ours, theirs = [], []
        for _ in range(args.rounds):
            tokens, seconds = _ours(folder, rows, cfg, tok.pad_token_id)
            ours.append(tokens / seconds)
            tokens, seconds = _trainer(folder, rows, cfg, tok.pad_token_id)
            theirs.append(tokens / seconds)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"model {args.model}, {args.rows} rows, {args.steps} steps x batch {args.batch}, seq len {args.seq_len}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds (median)")
    print(f"{'':24}{'tokens/s':>12}")
    print(f"{'our loop':24}{a:12.0f}")
    print(f"{'Trainer + peft':24}{b:12.0f}")
    print(f"ratio (ours / Trainer): {a / b:.2f}x")


if __name__ == "__main__":
    main()
