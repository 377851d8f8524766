"""The official OpenAI and Anthropic SDKs against the gateway, each reaching the other API.

Run by tests/tests/body_transform.rs, which starts the gateway (header-routing and
body-transform in front of strict mock backends) and sets PORTICO_URL.
"""

import json
import os

import anthropic
import openai
import pytest

URL = os.environ.get("PORTICO_URL")
pytestmark = pytest.mark.skipif(not URL, reason="PORTICO_URL is set by the Rust test that starts the gateway")

# The mock backends report this usage; the gateway's credential is irrelevant here (no auth).
MOCK = {"x-mock-usage": "11,7"}
WEATHER_OPENAI = {
    "type": "function",
    "function": {"name": "weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
WEATHER_ANTHROPIC = {"name": "weather", "description": "Weather for a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def openai_client():
    return openai.OpenAI(base_url=f"{URL}/v1", api_key="gateway-key", default_headers=MOCK, max_retries=0)


def anthropic_client():
    return anthropic.Anthropic(base_url=URL, api_key="gateway-key", default_headers=MOCK, max_retries=0)


def test_openai_sdk_to_anthropic_backend():
    r = openai_client().chat.completions.create(
        model="claude-test",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=64,
        temperature=0.2,
    )
    assert isinstance(r, openai.types.chat.ChatCompletion)
    assert r.choices[0].message.content == "Hello from anthropic"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 7 and r.usage.total_tokens == 18


def test_openai_sdk_streaming_to_anthropic_backend():
    stream = openai_client().chat.completions.create(
        model="claude-test",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == 18


def test_openai_sdk_tool_call_round_trip():
    client = openai_client()
    first = client.chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER_OPENAI], tool_choice="auto"
    )
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    # Send the tool result back: history with a tool call and a tool message translates too.
    second = client.chat.completions.create(
        model="claude-test",
        tools=[WEATHER_OPENAI],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "12 C"},
        ],
    )
    assert second.choices[0].message.content == "Hello from anthropic"


def test_openai_sdk_gets_typed_errors():
    with pytest.raises(openai.BadRequestError) as err:
        openai_client().chat.completions.create(model="claude-test", messages=[{"role": "user", "content": "x"}], temperature=1.9)
    assert "temperature" in str(err.value)


def test_anthropic_sdk_to_openai_backend():
    r = anthropic_client().messages.create(
        model="gpt-test", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    )
    assert isinstance(r, anthropic.types.Message)
    assert r.content[0].text == "Hello from openai"
    assert r.stop_reason == "end_turn"
    assert r.usage.input_tokens == 11 and r.usage.output_tokens == 7


def test_anthropic_sdk_streaming_to_openai_backend():
    with anthropic_client().messages.stream(model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7


def test_anthropic_sdk_tool_call_round_trip():
    client = anthropic_client()
    first = client.messages.create(
        model="gpt-test", max_tokens=64, tools=[WEATHER_ANTHROPIC], messages=[{"role": "user", "content": "Weather in Oslo?"}]
    )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "weather" and use.input == {"city": "Oslo"}
    second = client.messages.create(
        model="gpt-test",
        max_tokens=64,
        tools=[WEATHER_ANTHROPIC],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "12 C"}]},
        ],
    )
    assert second.content[0].text == "Hello from openai"


def test_anthropic_sdk_streams_tool_calls():
    with anthropic_client().messages.stream(
        model="gpt-test", max_tokens=64, tools=[WEATHER_ANTHROPIC], messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.input == {"city": "Oslo"} and final.stop_reason == "tool_use"


# === Fidelity: cache counts, refusals, what cannot translate ===

def test_openai_sdk_sees_the_anthropic_backends_cache_reads():
    # The Anthropic backend reports 11 uncached input tokens, 80 cache reads and 5 cache writes.
    r = openai_client().chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "Hi"}], extra_headers={"x-mock-cache": "80,5"}
    )
    assert r.usage.prompt_tokens == 96 and r.usage.total_tokens == 103
    assert r.usage.prompt_tokens_details.cached_tokens == 80
    stream = openai_client().chat.completions.create(
        model="claude-test",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-cache": "80,5"},
    )
    assert list(stream)[-1].usage.prompt_tokens_details.cached_tokens == 80


def test_anthropic_sdk_sees_the_openai_backends_cached_tokens():
    # The OpenAI backend reports 100 prompt tokens, 80 of them cached and 5 written to its cache.
    headers = {"x-mock-usage": "100,7", "x-mock-cache": "80,5"}
    r = anthropic_client().messages.create(
        model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "Hi"}], extra_headers=headers
    )
    assert (r.usage.input_tokens, r.usage.cache_read_input_tokens, r.usage.cache_creation_input_tokens) == (15, 80, 5)
    with anthropic_client().messages.stream(
        model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "Hi"}], extra_headers=headers
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 80 and final.usage.input_tokens == 15


def test_an_openai_refusal_reaches_the_anthropic_sdk():
    refusal = {"x-mock-refusal": "I can't help with that."}
    r = anthropic_client().messages.create(
        model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "Hi"}], extra_headers=refusal
    )
    assert r.stop_reason == "refusal" and r.content[0].text == "I can't help with that."
    with anthropic_client().messages.stream(
        model="gpt-test", max_tokens=64, messages=[{"role": "user", "content": "Hi"}], extra_headers=refusal
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "I can't help with that." and final.stop_reason == "refusal"


def test_an_anthropic_refusal_reaches_the_openai_sdk():
    r = openai_client().chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "Hi"}], extra_headers={"x-mock-refusal": "No."}
    )
    assert r.choices[0].finish_reason == "content_filter"


def test_an_anthropic_server_tool_is_refused_by_name():
    with pytest.raises(anthropic.BadRequestError) as err:
        anthropic_client().messages.create(
            model="gpt-test",
            max_tokens=64,
            messages=[{"role": "user", "content": "News?"}],
            tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 1}],
        )
    assert err.value.status_code == 400
    assert "tools[0].type" in str(err.value) and "web_search_20250305" in str(err.value)


def test_strict_tools_keep_their_strictness():
    strict = {**WEATHER_OPENAI, "function": {**WEATHER_OPENAI["function"], "strict": True}}
    r = openai_client().chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[strict]
    )
    assert r.choices[0].finish_reason == "tool_calls"


def test_a_tool_call_with_broken_arguments_fails_the_anthropic_stream():
    with pytest.raises(anthropic.APIStatusError) as err:
        with anthropic_client().messages.stream(
            model="gpt-test",
            max_tokens=64,
            tools=[WEATHER_ANTHROPIC],
            messages=[{"role": "user", "content": "Weather?"}],
            extra_headers={"x-mock-tool-args": "{city: Oslo"},
        ) as stream:
            stream.get_final_message()
    assert err.value.body["error"]["code"] == "bad_upstream_response"


def test_anthropic_sdk_reads_every_kind_of_gateway_error():
    client = anthropic_client()
    hi = [{"role": "user", "content": "Hi"}]
    # A Portico filter's refusal.
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="no-such-model", max_tokens=16, messages=hi)
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert err.value.body["error"]["code"] == "unknown_model"
    # Envoy's own reply: a body over the buffer limit.
    with pytest.raises(anthropic.APIStatusError) as err:
        client.messages.create(model="gpt-test", max_tokens=16, messages=[{"role": "user", "content": "x" * (2 << 20)}])
    assert err.value.status_code == 413
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "request_too_large"
    assert err.value.body["error"]["code"] == "body_too_large"
    # A backend answer that cannot be translated.
    with pytest.raises(anthropic.InternalServerError) as err:
        client.messages.create(model="gpt-test", max_tokens=16, messages=hi, extra_headers={"x-mock-answer": "garbage"})
    assert err.value.status_code == 502
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["code"] == "bad_upstream_response"


def test_openai_sdk_gets_a_502_for_a_backend_answer_it_cannot_receive():
    with pytest.raises(openai.InternalServerError) as err:
        openai_client().chat.completions.create(
            model="claude-test",
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-mock-answer": "wrong_types"},
        )
    assert err.value.status_code == 502
    assert err.value.code == "bad_upstream_response"
