from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from site_agent.data.toy import make_toy_dataset
from site_agent.operators.base import Batch
from tests.unit.site_agent.evaluation.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose tokenizer was trained on clean toy text (shared by every test of the package)."""
    clean, _ = make_toy_dataset(300, seed=7, noise_rate=0.0)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), clean["instruction"] + clean["answer"])


@pytest.fixture(scope="session")
def held_out() -> Batch:
    batch, _ = make_toy_dataset(24, seed=99, noise_rate=0.0)
    return batch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model's matrices are too small to split: one thread is as fast, and much faster than two
    fighting for a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
