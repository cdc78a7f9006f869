import math
from typing import Any

import pytest

from protos.errors import ConfigError
from site_agent.errors import OperatorError
from site_agent.llm.errors import LLMConfigError, LLMError
from site_agent.llm.factory import LLMConfig, create_llm, load_llm_config
from site_agent.llm.local_hf import DEFAULT_LOCAL_NAME, LocalHF
from site_agent.llm.openai_compat import OpenAICompat, check_local_url
from tests.fakes import FakeOpenAIServer, last_user_message, scripted, slow

SECRET = "patient Zhang San, 47, HbA1c 9.1%"


def _client(server: FakeOpenAIServer, **kw: Any) -> OpenAICompat:
    return OpenAICompat(server.base_url, server.model, **{"backoff_s": 0.01, "timeout_s": 5.0, **kw})


def test_chat_end_to_end_keeps_order_and_sends_the_settings() -> None:
    with FakeOpenAIServer(lambda body: last_user_message(body).upper()) as server:
        llm = _client(server, max_batch=3, api_key="k-123")
        prompts = [f"question {i}" for i in range(7)]
        assert llm.chat(prompts, system="be brief", max_new_tokens=33, temperature=0.5, seed=9) == [
            p.upper() for p in prompts]
        bodies = server.posted()
        assert len(bodies) == 7
        body = bodies[0]
        assert body["model"] == "fake-model" and body["max_tokens"] == 33
        assert body["temperature"] == 0.5 and body["seed"] == 9
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        assert server.requests[0].headers.get("Authorization") == "Bearer k-123"
        assert llm.list_models() == ["fake-model"]
        assert llm.chat([]) == []


def test_retries_server_errors_then_succeeds() -> None:
    with FakeOpenAIServer(scripted(500, 503, "  hello  ")) as server:
        assert _client(server, max_retries=3).chat(["hi"]) == ["hello"]
        assert len(server.posted()) == 3


def test_gives_up_after_bounded_retries_without_quoting_the_prompt() -> None:
    with FakeOpenAIServer(scripted(500)) as server:
        with pytest.raises(LLMError) as err:
            _client(server, max_retries=2).chat([SECRET])
        assert len(server.posted()) == 3
        assert "3 attempts" in str(err.value) and "HTTP 500" in str(err.value)
        assert "Zhang" not in str(err.value) and isinstance(err.value, OperatorError)


def test_client_errors_are_not_retried() -> None:
    with FakeOpenAIServer(scripted(400)) as server:
        with pytest.raises(LLMError, match="HTTP 400"):
            _client(server, max_retries=3).chat(["hi"])
        assert len(server.posted()) == 1


def test_timeout_is_respected_and_retried() -> None:
    with FakeOpenAIServer(slow(scripted("late"), 2.0)) as server:
        with pytest.raises(LLMError, match="Timeout"):
            _client(server, timeout_s=0.2, max_retries=1).chat(["hi"])
        assert len(server.posted()) == 2


def test_malformed_replies_are_clear_errors() -> None:
    with FakeOpenAIServer(scripted({"choices": []})) as server:
        with pytest.raises(LLMError, match="malformed chat reply"):
            _client(server).chat(["hi"])


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000/v1", "http://10.2.3.4",
                                 "https://192.168.1.20/v1/", "http://[::1]:9000", "http://vllm:8000",
                                 "http://llm.internal", "http://gpu01.local:8000", "http://169.254.1.1"])
def test_site_local_urls_are_accepted(url: str) -> None:
    root = check_local_url(url)
    assert not root.endswith("/v1") and not root.endswith("/")


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "http://8.8.8.8", "http://llm.example.com"])
def test_non_local_urls_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(LLMConfigError, match="allow_non_local"):
        OpenAICompat(url, "m")
    with pytest.raises(ConfigError):
        load_llm_config({"backend": "openai", "base_url": url, "model": "m"})
    assert check_local_url(url, allow_non_local=True).startswith("http")
    assert load_llm_config({"backend": "openai", "base_url": url, "model": "m", "allow_non_local": True})


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "not a url", "http://"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(LLMConfigError):
        check_local_url(url)


def _logprob_handler(body: dict[str, Any]) -> dict[str, Any]:
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
    if "prompt" in body:  # /v1/completions, the completion alone
        return {"choices": [{"text": "x", "prompt_logprobs": [None, {"7": {"logprob": -2.0}},
                                                              {"8": {"logprob": -4.0, "rank": 1}}]}]}
    if body.get("continue_final_message"):
        assert body["prompt_logprobs"] == 0 and body["add_generation_prompt"] is False
        lps = [None, {"1": {"logprob": -0.5}}, {"2": {"logprob": -0.5}}, {"3": {"logprob": -1.0}},
               {"4": {"logprob": -3.0}}]
        return {**reply, "prompt_logprobs": lps, "usage": {"prompt_tokens": 5}}
    return {**reply, "usage": {"prompt_tokens": 3}}


def test_completion_loss_from_prompt_logprobs() -> None:
    with FakeOpenAIServer(_logprob_handler) as server:
        llm = _client(server)
        loss = llm.completion_loss(["q", "", "q"], ["answer", "answer", ""])
        assert loss[0] == pytest.approx(2.0) and loss[1] == pytest.approx(3.0) and math.isnan(loss[2])
        with pytest.raises(LLMError, match="one completion per prompt"):
            llm.completion_loss(["q"], [])


def test_completion_loss_without_logprobs_is_a_clear_error() -> None:
    with FakeOpenAIServer(scripted("plain text only")) as server:
        with pytest.raises(LLMError, match="prompt_logprobs"):
            _client(server).completion_loss(["q"], ["a"])
    with FakeOpenAIServer(scripted(400)) as server:
        with pytest.raises(LLMError, match="prompt_logprobs"):
            _client(server).completion_loss(["q"], ["a"])


def test_factory_builds_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    local = create_llm(LLMConfig())
    assert isinstance(local, LocalHF) and local.name == DEFAULT_LOCAL_NAME  # not loaded yet: cheap
    with FakeOpenAIServer(scripted("ok")) as server:
        cfg = load_llm_config({"backend": "openai", "base_url": server.base_url + "/v1", "model": "m",
                               "api_key_env": "AUTODP_TEST_LLM_KEY", "max_batch": 2})
        with pytest.raises(LLMConfigError, match="AUTODP_TEST_LLM_KEY"):
            create_llm(cfg)
        monkeypatch.setenv("AUTODP_TEST_LLM_KEY", "s3cret")
        llm = create_llm(cfg)
        assert llm.chat(["hi"]) == ["ok"] and llm.name == "openai-compat:m"
        assert server.requests[0].headers.get("Authorization") == "Bearer s3cret"


@pytest.mark.parametrize("data", [{"backend": "openai"}, {"backend": "remote"}, {"backend": "local", "model": "m"},
                                  {"max_batch": 0}, {"unknown": 1}])
def test_bad_configs_name_the_key(data: dict[str, Any]) -> None:
    with pytest.raises(LLMConfigError, match=r"^llm"):
        load_llm_config(data)
