"""A tiny causal LM built from a config for LoRA tests: a byte-level BPE tokenizer trained on the given
texts (with a ChatML chat template) and a 2-layer Llama, saved as a plain HF folder. Builds in well
under a second; nothing is downloaded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHATML", "build_tiny_model"]

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tiny_model(folder: Path, texts: Sequence[str], *, vocab: int = 384, hidden: int = 48,
                     layers: int = 2, seed: int = 0, chat_template: bool = True,
                     init_range: float = 0.2, max_positions: int = 512) -> Path:
    """Build the tokenizer and model into ``folder``. ``max_positions``: the config's max_position_embeddings
    (RoPE has no weights per position, so more costs nothing; generation past it makes transformers warn)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(list(texts), trainer)
    fast: Any = PreTrainedTokenizerFast
    tok = fast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>")
    if chat_template:
        tok.chat_template = CHATML
    # A wide init: with the usual 0.02 the tied embeddings are so small that no adapter can make the
    # logits confident, and a LoRA run barely moves the loss.
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions, tie_word_embeddings=True, initializer_range=init_range,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
