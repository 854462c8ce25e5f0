"""The official `anthropic` Python package against a running Switchyard.

Run by tests/e2e/messages.rs: python3 anthropic_client.py ROUTER_URL MOCK_URL CLIENT_KEY
Model `claude` is served by an Anthropic backend (pass-through), `gpt` by an
OpenAI-compatible one (translation); both are the mock upstream, which
records what it received. Prints one line per check and a closing
`N passed, N failed` line.
"""

import base64
import json
import sys

from checks import Checks

import anthropic

router, mock, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = anthropic.Anthropic(base_url=router, api_key=key, max_retries=0, timeout=20)
TOOLS = [
    {
        "name": "lookup",
        "description": "Looks a thing up",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}},
    }
]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n not really an image").decode()


checks = Checks(mock)
check, last_request = checks.check, checks.last_request


@check("plain message through an Anthropic backend: passed through, answered as it came")
def _():
    r = client.messages.create(
        model="claude",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        metadata={"user_id": "user-42"},
        messages=[{"role": "user", "content": "Hello SDK"}],
    )
    assert r.content[0].text.startswith("This is a mock answer from claude-mock to: Hello SDK"), r
    assert r.stop_reason == "end_turn" and r.usage.input_tokens > 0 and r.usage.output_tokens == 16, r
    seen = last_request()
    assert seen["path"] == "/v1/messages", seen["path"]
    assert seen["anthropic_version"] == client.default_headers["anthropic-version"], seen
    sent = json.loads(seen["raw"])
    assert sent["model"] == "claude-mock" and sent["system"][0]["cache_control"] == {"type": "ephemeral"}, sent
    assert sent["metadata"] == {"user_id": "user-42"}, sent


@check("plain message through an OpenAI backend: translated both ways")
def _():
    r = client.messages.create(
        model="gpt",
        max_tokens=100,
        system="Be brief.",
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
        messages=[{"role": "user", "content": "Hello SDK"}],
    )
    assert r.type == "message" and r.role == "assistant", r
    assert r.content[0].type == "text" and r.content[0].text.startswith("This is a mock answer from gpt-mock"), r
    assert r.stop_reason == "end_turn" and r.usage.output_tokens == 16, r
    seen = last_request()
    assert seen["path"] == "/v1/chat/completions", seen["path"]
    body = seen["body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}, body
    assert body["stop"] == ["END"] and body["user"] == "user-42" and body["max_tokens"] == 100, body


for model, name in [("claude", "claude-mock"), ("gpt", "gpt-mock")]:

    @check(f"streaming ({model}): the SDK assembles the text, stop reason and usage")
    def _(model=model, name=name):
        with client.messages.stream(model=model, max_tokens=100, messages=[{"role": "user", "content": "Stream it"}]) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert text.startswith(f"This is a mock answer from {name} to: Stream it"), text
        assert final.content[0].text == text and final.stop_reason == "end_turn", final
        assert final.usage.output_tokens == 16, final.usage

    @check(f"tools ({model}): tool_use, then the tool_result round trip")
    def _(model=model, name=name):
        first = client.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "Find cats"}])
        assert first.stop_reason == "tool_use", first
        use = [b for b in first.content if b.type == "tool_use"][0]
        assert use.name == "lookup" and use.input == {"query": "Find cats", "limit": 3}, use
        second = client.messages.create(
            model=model,
            max_tokens=100,
            tools=TOOLS,
            messages=[
                {"role": "user", "content": "Find cats"},
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3 cats"}]},
            ],
        )
        assert second.stop_reason == "end_turn" and second.content[0].text.startswith(f"This is a mock answer from {name}"), second
        if model == "gpt":
            body = last_request()["body"]
            assert body["messages"][1]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": json.dumps(use.input, separators=(",", ":"))}, body
            assert body["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "3 cats"}, body
            assert body["tools"][0]["function"]["parameters"] == TOOLS[0]["input_schema"], body

    @check(f"tools, streamed ({model}): the SDK assembles the tool input")
    def _(model=model):
        with client.messages.stream(model=model, max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "Find dogs"}]) as s:
            final = s.get_final_message()
        use = [b for b in final.content if b.type == "tool_use"][0]
        assert final.stop_reason == "tool_use" and use.input == {"query": "Find dogs", "limit": 3}, final

    @check(f"images ({model})")
    def _(model=model):
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
        r = client.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
        assert r.content[0].text, r
        seen = last_request()
        if model == "gpt":
            assert seen["body"]["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}, seen
        else:
            assert json.loads(seen["raw"])["messages"][0]["content"][0] == image, seen


@check("count_tokens: an Anthropic backend counts, else the router estimates and says so")
def _():
    messages = [{"role": "user", "content": "Count these few words please"}]
    raw = client.messages.with_raw_response.count_tokens(model="claude", messages=messages)
    assert raw.headers["x-switchyard-token-count"] == "upstream" and raw.parse().input_tokens > 0, raw.parse()
    seen = last_request()
    assert seen["path"] == "/v1/messages/count_tokens" and json.loads(seen["raw"])["model"] == "claude-mock", seen
    raw = client.messages.with_raw_response.count_tokens(model="gpt", messages=messages)
    assert raw.headers["x-switchyard-token-count"] == "estimate" and raw.parse().input_tokens > 0, raw.parse()


@check("a failing Anthropic backend fails over to the next target")
def _():
    raw = client.messages.with_raw_response.create(model="claude-failover", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    # A 503 is retried once on the same backend, then the next target serves.
    assert raw.headers["x-switchyard-backend"] == "oai" and raw.headers["x-switchyard-attempts"] == "3", dict(raw.headers)
    assert raw.parse().content[0].text.startswith("This is a mock answer from gpt-mock"), raw.parse()


@check("a stream cut mid-answer is rescued on another provider, seamlessly")
def _():
    whole = client.messages.create(model="canon", max_tokens=50, messages=[{"role": "user", "content": "Tell a story"}])
    with client.messages.stream(model="rescued", max_tokens=50, messages=[{"role": "user", "content": "Tell a story"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text, (text, whole.content[0].text)
    assert final.stop_reason == "end_turn", final


@check("errors: a wrong key is an AuthenticationError")
def _():
    bad = anthropic.Anthropic(base_url=router, api_key="sk-wrong", max_retries=0)
    try:
        bad.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("no error")
    except anthropic.AuthenticationError as e:
        assert e.status_code == 401 and e.body["error"]["type"] == "authentication_error", e.body


@check("errors: an invalid request is a BadRequestError naming the field")
def _():
    try:
        client.messages.create(model="claude", max_tokens=5, messages=[])
        raise AssertionError("no error")
    except anthropic.BadRequestError as e:
        assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", e.body
        assert "messages" in e.body["error"]["message"], e.body


@check("errors: an unknown model is a NotFoundError")
def _():
    try:
        client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("no error")
    except anthropic.NotFoundError as e:
        assert e.body["error"]["type"] == "not_found_error", e.body


@check("errors: upstream failures are an InternalServerError in Anthropic's error shape")
def _():
    try:
        client.messages.create(model="broken", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("no error")
    except anthropic.InternalServerError as e:
        assert e.status_code == 502 and e.body["type"] == "error" and e.body["error"]["type"] == "api_error", (e.status_code, e.body)
        assert "anth-broken: answered HTTP 503" in e.body["error"]["message"], e.body
        assert e.response.headers["x-should-retry"] == "false", dict(e.response.headers)


@check("errors: a stream that breaks with nothing to continue it raises, not a cut answer")
def _():
    try:
        with client.messages.stream(model="cut", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
            "".join(s.text_stream)
        raise AssertionError("no error")
    except anthropic.APIStatusError as e:
        assert "stream" in str(e), e
    except anthropic.APIError as e:
        assert "stream" in str(e), e


checks.finish()
