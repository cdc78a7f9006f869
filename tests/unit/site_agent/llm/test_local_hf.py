import math
from pathlib import Path

import pytest

from site_agent.llm.errors import LLMConfigError, LLMError
from site_agent.llm.local_hf import LocalHF
from tests.fakes import local_smollm2


@pytest.fixture(scope="module")
def llm() -> LocalHF:
    return local_smollm2()


@pytest.mark.slow
def test_greedy_chat_is_deterministic_and_order_independent(llm: LocalHF) -> None:
    prompts = ["What is gout?", "Name one fruit.", "高血压的常见症状有哪些？"]
    replies = llm.chat(prompts, max_new_tokens=10)
    assert len(replies) == 3 and all(r.strip() for r in replies)
    assert not any("<|im_end|>" in r or "<|im_start|>" in r for r in replies)
    assert llm.chat(list(reversed(prompts)), max_new_tokens=10) == list(reversed(replies))


@pytest.mark.slow
def test_sampling_is_seeded(llm: LocalHF) -> None:
    first = llm.chat(["Name one fruit."], max_new_tokens=8, temperature=1.0, seed=5)
    assert llm.chat(["Name one fruit."], max_new_tokens=8, temperature=1.0, seed=5) == first


@pytest.mark.slow
def test_completion_loss_prefers_a_fitting_completion(llm: LocalHF) -> None:
    prompts = ["What is the capital of France?", "What is the capital of France?", "", ""]
    completions = ["The capital of France is Paris.", "zqx vlorp 7#@ kk wibble ptang", "The sky is blue.", ""]
    loss = llm.completion_loss(prompts, completions)
    assert loss[0] < loss[1]
    assert 0 < loss[2] < 20 and math.isnan(loss[3])
    # batching with padding does not change a row's loss
    assert llm.completion_loss(prompts[:1], completions[:1])[0] == pytest.approx(loss[0], rel=1e-4)
    with pytest.raises(LLMError, match="one completion per prompt"):
        llm.completion_loss(prompts, completions[:2])


def test_folder_checks_and_names(tmp_path: Path) -> None:
    with pytest.raises(LLMConfigError, match="config.json"):
        LocalHF(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LLMConfigError, match="safetensors"):
        LocalHF(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    name = LocalHF(tmp_path).name  # no load: construction is cheap
    assert name.startswith(f"{tmp_path.name}-local-") and name == LocalHF(tmp_path).name
    (tmp_path / "model.safetensors").write_bytes(b"xx")
    assert LocalHF(tmp_path).name != name
    with pytest.raises(LLMError, match="cannot load"):
        LocalHF(tmp_path).chat(["hi"])
