"""The official `openai` Python package's Responses API against a running Switchyard.

Run by tests/e2e/responses.rs: python3 responses_client.py ROUTER_URL MOCK_URL CLIENT_KEY
Model `chat` is served by an OpenAI-compatible chat backend (translation),
`resp` by one that serves the Responses API itself (pass-through); both are
the mock upstream, which records what it received. Prints one line per
check and a closing `N passed, N failed` line.
"""

import json
import sys

from checks import Checks

import openai
import pydantic

router, mock, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{router}/v1", api_key=key, max_retries=0, timeout=20)
TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Looks a thing up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}},
    }
]
BACKEND_MODEL = {"chat": "chat-mock", "resp": "resp-mock"}


checks = Checks(mock)
check, last_request = checks.check, checks.last_request


class Answer(pydantic.BaseModel):
    answer: str


for model in ["chat", "resp"]:
    name = BACKEND_MODEL[model]

    @check(f"plain text ({model})")
    def _(model=model, name=name):
        r = client.responses.create(model=model, instructions="Be brief.", input="Hello SDK", max_output_tokens=100, metadata={"team": "blue"})
        assert r.status == "completed" and r.output_text.startswith(f"This is a mock answer from {name} to: Hello SDK"), r
        assert r.usage.input_tokens > 0 and r.usage.output_tokens == 16, r.usage
        seen = last_request()
        if model == "chat":
            assert seen["path"] == "/v1/chat/completions", seen["path"]
            assert seen["body"]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello SDK"}], seen
            assert seen["body"]["max_tokens"] == 100 and seen["body"]["metadata"] == {"team": "blue"}, seen
        else:
            assert seen["path"] == "/v1/responses", seen["path"]
            sent = json.loads(seen["raw"])
            assert sent["model"] == name and sent["input"] == "Hello SDK" and sent["instructions"] == "Be brief.", sent

    @check(f"streamed text: the SDK's accumulated output_text is the backend's answer ({model})")
    def _(model=model, name=name):
        whole = client.responses.create(model=model, input="Stream it")
        deltas = []
        with client.responses.stream(model=model, input="Stream it") as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    deltas.append(event.delta)
            final = stream.get_final_response()
        assert "".join(deltas) == whole.output_text == final.output_text, ("".join(deltas), whole.output_text, final.output_text)
        assert final.status == "completed" and final.usage.output_tokens == 16, final

    @check(f"function call round trip ({model})")
    def _(model=model, name=name):
        first = client.responses.create(model=model, input="Find cats", tools=TOOLS)
        calls = [o for o in first.output if o.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "lookup", first.output
        assert json.loads(calls[0].arguments) == {"query": "Find cats", "limit": 3}, calls[0]
        second = client.responses.create(
            model=model,
            tools=TOOLS,
            input=[
                {"role": "user", "content": "Find cats"},
                *[o.model_dump(exclude_none=True) for o in first.output],
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": "3 cats"},
            ],
        )
        assert second.output_text.startswith(f"This is a mock answer from {name}"), second
        if model == "chat":
            body = last_request()["body"]
            assert body["messages"][1]["tool_calls"][0]["id"] == calls[0].call_id, body
            assert body["messages"][2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "3 cats"}, body
            assert body["tools"][0] == {"type": "function", "function": {"name": "lookup", "description": "Looks a thing up", "parameters": TOOLS[0]["parameters"]}}, body

    @check(f"function call, streamed ({model})")
    def _(model=model):
        with client.responses.stream(model=model, input="Find dogs", tools=TOOLS) as stream:
            final = stream.get_final_response()
        call = [o for o in final.output if o.type == "function_call"][0]
        assert json.loads(call.arguments) == {"query": "Find dogs", "limit": 3}, final.output

    @check(f"JSON schema output parsed by the SDK ({model})")
    def _(model=model, name=name):
        r = client.responses.parse(model=model, input="Answer in JSON", text_format=Answer)
        assert r.output_parsed.answer.startswith(f"This is a mock answer from {name}"), r.output_text
        seen = last_request()
        if model == "chat":
            assert seen["body"]["response_format"]["type"] == "json_schema", seen["body"]
            assert seen["body"]["response_format"]["json_schema"]["schema"]["properties"]["answer"]["type"] == "string", seen["body"]
        else:
            assert json.loads(seen["raw"])["text"]["format"]["type"] == "json_schema", seen


@check("errors: a wrong key is an AuthenticationError")
def _():
    bad = openai.OpenAI(base_url=f"{router}/v1", api_key="sk-wrong", max_retries=0)
    try:
        bad.responses.create(model="chat", input="hi")
        raise AssertionError("no error")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e


@check("errors: stored state is a BadRequestError naming the field")
def _():
    for kwargs, param in [({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store")]:
        try:
            client.responses.create(model="chat", input="hi", **kwargs)
            raise AssertionError("no error")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == param, e.body


for model in ["cut", "resp-cut"]:

    @check(f"errors: an upstream failing mid-stream ends with response.failed, never completed ({model})")
    def _(model=model):
        kinds = []
        with client.responses.stream(model=model, input="Hello") as stream:
            for event in stream:
                kinds.append(event.type)
            try:
                stream.get_final_response()
                raise AssertionError("a final response from a failed stream")
            except RuntimeError:
                pass
        assert "response.output_text.delta" in kinds and kinds[-2:] == ["error", "response.failed"], kinds
        assert "response.completed" not in kinds, kinds


@check("a stream cut mid-answer is rescued on another backend, seamlessly")
def _():
    whole = client.responses.create(model="canon", input="Tell a story")
    with client.responses.stream(model="rescued", input="Tell a story") as stream:
        final = stream.get_final_response()
    assert final.output_text == whole.output_text, (final.output_text, whole.output_text)


checks.finish()
