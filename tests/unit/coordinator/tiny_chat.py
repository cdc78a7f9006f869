"""A tiny chat model for meta-agent tests: a 2-layer, 64-wide Llama with random weights and the real SmolLM2
tokenizer and chat template, saved as a plain HF folder (nothing downloaded); and a fixture that keeps torch
on one thread while a test runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["build_tiny_chat_model", "one_torch_thread"]


def build_tiny_chat_model(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from protos.bundled_models import smollm2_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(), local_files_only=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices: one thread is as fast, and far faster than two fighting over a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
