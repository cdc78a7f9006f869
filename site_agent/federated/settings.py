"""The ``federated_training:`` section of a site's YAML: whether this site takes part in federated LoRA
training after a search (off by default), and the bounds it puts on what the coordinator may ask.

Example::

    federated_training:
      enabled: true                  # false (the default): the site refuses to take part
      superlink: coordinator.example.org:9093
      model_path: models/smollm2     # the base model; every site must use the same one
      max_rounds: 10
      max_local_steps: 100
      dp_sgd: true                   # DP-SGD with privacy.dp_sgd, each round charged to the privacy ledger

What leaves the site when it is enabled is described in docs/federated-training.md: the trained LoRA
adapter (its weights) and the number of training rows, every round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from protos.config import StrictModel

__all__ = ["FederatedTrainingSettings"]


class FederatedTrainingSettings(StrictModel):
    enabled: bool = Field(default=False, description="take part in federated LoRA training; off by default, "
                          "since adapter weights (not only scores) leave the site")
    superlink: str = Field(default="127.0.0.1:9093", description="host:port of the coordinator's Flower "
                           "SuperLink; the host must be named in the coordinator's certificate")
    model_path: Path | None = Field(default=None, description="local base model folder (default: the bundled "
                                    "SmolLM2-135M-Instruct); must be the same model at every site")
    max_rounds: int = Field(default=20, ge=1, le=1000, description="refuse runs with more rounds")
    max_local_steps: int = Field(default=200, ge=1, le=10_000, description="refuse rounds with more local steps")
    max_seq_len: int = Field(default=512, ge=8, le=8192)
    max_lora_r: int = Field(default=64, ge=1, le=256)
    dp_sgd: bool = Field(default=False, description="train every round with DP-SGD (privacy.dp_sgd settings) and "
                         "charge its epsilon to the privacy ledger")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    threads: int = Field(default=0, ge=0, le=256, description="torch threads (0: torch's default)")
    eval_batch_size: int = Field(default=8, ge=1, le=4096)
    timeout_s: float = Field(default=3600.0, gt=0, le=7 * 86_400.0,
                             description="give up when the final adapter has not arrived by then")
