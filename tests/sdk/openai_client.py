"""The official `openai` Python package against a running Switchyard.

Run by tests/e2e/sdk.rs: python3 openai_client.py ROUTER_URL MOCK_URL CLIENT_KEY
Prints one line per check and a closing `N passed, N failed` line.
"""

import json
import sys
import urllib.request

import openai

router, mock, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=f"{router}/v1", api_key=key, max_retries=2, timeout=20)
passed, failed = 0, 0


def mock_requests():
    with urllib.request.urlopen(f"{mock}/mock/requests") as r:
        return json.load(r)


def clear_mock():
    urllib.request.urlopen(urllib.request.Request(f"{mock}/mock/requests", method="DELETE")).read()


def check(name):
    def run(fn):
        global passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        return fn

    return run


@check("non-streaming answer names the model that answered")
def _():
    r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hello SDK"}])
    assert r.choices[0].message.content.startswith("This is a mock answer"), r
    assert r.model == "good-model", r.model
    assert r.usage.total_tokens > 0


@check("raw response carries the routing headers")
def _():
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-switchyard-backend"] == "good", dict(raw.headers)
    assert raw.headers["x-switchyard-policy"].startswith("cheapest-healthy@")
    assert raw.headers["x-request-id"]


@check("streaming with a usage chunk")
def _():
    chunks = list(
        client.chat.completions.create(
            model="auto", stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Stream to me"}]
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Stream to me" in text, text
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@check("a stream cut mid-answer raises instead of ending quietly")
def _():
    got = []
    try:
        for c in client.chat.completions.create(model="cut", stream=True, messages=[{"role": "user", "content": "x"}]):
            got.append(c)
    except openai.APIError as e:
        assert "stream_interrupted" in str(e.body) or "failed after" in str(e), e
        assert got, "the chunks before the cut were delivered"
        return
    raise AssertionError(f"no error after {len(got)} chunks")


@check("a stream cut mid-answer and rescued is a normal, complete stream")
def _():
    whole = client.chat.completions.create(model="canon", messages=[{"role": "user", "content": "Rescue me"}])
    raw = client.chat.completions.with_raw_response.create(
        model="rescued", stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "Rescue me"}]
    )
    assert raw.headers["x-switchyard-backend"] == "cut-canon", dict(raw.headers)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content, (text, whole.choices[0].message.content)
    assert len({c.id for c in chunks}) == 1, {c.id for c in chunks}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.completion_tokens > 0


@check("unknown model is a NotFoundError with OpenAI's code")
def _():
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body
        return
    raise AssertionError("no error")


@check("a malformed request is a BadRequestError naming the field")
def _():
    try:
        client.chat.completions.create(model="auto", messages=[])
    except openai.BadRequestError as e:
        assert e.body["param"] == "messages", e.body
        return
    raise AssertionError("no error")


@check("a wrong key is an AuthenticationError")
def _():
    bad = openai.OpenAI(base_url=f"{router}/v1", api_key="wrong-key-0000", max_retries=0)
    try:
        bad.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    except openai.AuthenticationError:
        return
    raise AssertionError("no error")


@check("after the router retried, the SDK does not retry on top")
def _():
    clear_mock()
    try:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    except openai.APIStatusError as e:
        assert e.status_code == 502, e.status_code
        attempts = int(e.response.headers["x-switchyard-attempts"])
        assert attempts == 3, f"the router made {attempts} attempts, not max_attempts"
        sent = [r for r in mock_requests() if r["model"].startswith("broken")]
        assert len(sent) == attempts, f"{len(sent)} upstream calls for {attempts} router attempts: the SDK retried"
        return
    raise AssertionError("no error")


@check("models list")
def _():
    ids = [m.id for m in client.models.list()]
    assert ids[:1] == ["auto"] and "good-model" in ids, ids


@check("models retrieve: a virtual model, a backend's model, an unknown one")
def _():
    assert client.models.retrieve("auto").id == "auto"
    assert client.models.retrieve("good-model").owned_by == "openai"
    try:
        client.models.retrieve("no-such-model")
        raise AssertionError("an unknown model was found")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e


@check("a client configured with a bare host (no /v1) reaches the same API")
def _():
    bare = openai.OpenAI(base_url=router, api_key=key, max_retries=0, timeout=20)
    r = bare.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Hello bare"}])
    assert r.choices[0].message.content.startswith("This is a mock answer"), r
    assert [m.id for m in bare.models.list()][:1] == ["auto"]


@check("embeddings")
def _():
    r = client.embeddings.create(model="good", input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8


print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
