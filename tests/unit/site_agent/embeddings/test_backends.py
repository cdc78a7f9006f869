import numpy as np
import pytest

from site_agent.embeddings import create_embedder, registered_embedders, text_for_embedding
from site_agent.embeddings.base import Embedder
from site_agent.errors import DataError


@pytest.fixture(scope="module")
def use_m3() -> Embedder:
    return create_embedder("use-m3", threads=1)  # loads on the first encode (~1 s); 1 thread: robust when busy


def test_both_backends_are_registered() -> None:
    assert {"use-m3", "minilm"} <= set(registered_embedders())
    with pytest.raises(ValueError, match="unknown embedder"):
        create_embedder("no-such-embedder")


def test_use_m3_gives_unit_float32_rows_for_english_and_chinese(use_m3: Embedder) -> None:
    texts = ["I have had a headache for three days.", "我头痛三天了。", "我的头已经疼了三天。",
             "今天股市大幅上涨。", ""]
    out = use_m3.encode(texts)
    assert out.shape == (5, 512) and out.dtype == np.float32 and use_m3.dim == 512
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()
    sims = out @ out.T
    # multilingual: a Chinese paraphrase is closer than an unrelated Chinese sentence,
    # and the English sentence is closer to its Chinese translation than to the unrelated one
    assert sims[1, 2] > sims[1, 3] + 0.2
    assert sims[0, 1] > sims[0, 3] + 0.2
    assert use_m3.encode([]).shape == (0, 512)
    # the same text in another batch: equal up to float32 rounding of the batched products
    assert np.allclose(use_m3.encode(texts[:2]), out[:2], atol=1e-5)


@pytest.mark.slow
def test_minilm_runs_offline_from_the_bundled_folder() -> None:
    minilm = create_embedder("minilm")
    out = minilm.encode(["What are the symptoms of gout?", "Gout causes sudden joint pain.", "The stock rose."])
    assert out.shape == (3, 384) and out.dtype == np.float32 and minilm.dim == 384
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2]


def test_text_for_embedding_joins_instruction_and_answer() -> None:
    batch = {"instruction": ["Q1", "Q2"], "answer": ["A1", ""], "label": ["clean", "empty"]}
    assert text_for_embedding(batch) == ["Q1\nA1", "Q2\n"]
    with pytest.raises(DataError, match="answer"):
        text_for_embedding({"instruction": ["Q1"]})
