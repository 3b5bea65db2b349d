"""``adaras serve``: a real server process on a free loopback port (tiny Qwen3, fp32,
eager, two maps, an API key), driven with the ``openai`` SDK and ``httpx``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys

import httpx
import pytest
from conftest import ENV_VAR, RunningServer, encode_prompts, free_port
from hf_oracle import hf_steered_generate

from adaras_vllm.maps import NeuronMap

pytestmark = pytest.mark.engine

KEY = "test-key"
MODEL = "tiny"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(qwen3_tiny, tmp_path_factory):
    model_dir, maps = qwen3_tiny
    port = free_port()
    cmd = [sys.executable, "-m", "adaras_vllm", "serve", str(model_dir),
           "--neuron-map", f"alpha_map={maps['alpha_map']}",
           "--neuron-map", f"beta_map={maps['beta_map']}",
           "--default-steer-alpha", "0", "--max-steer-alpha", "8", "--api-key", KEY,
           "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
           "--kv-cache-memory-bytes", str(256 << 20), "--max-num-seqs", "64",
           "--root-path", "/api", "--max-request-body-bytes", str(1 << 20)]
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["VLLM_DISABLE_REQUEST_ID_RANDOMIZATION"] = "1"  # clients' X-Request-Id used as is
    log = tmp_path_factory.mktemp("adaras-server") / "server.log"
    with RunningServer(cmd, env, log, port) as running:
        yield running.base


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def maps(qwen3_tiny):
    return {n: NeuronMap.load(p) for n, p in qwen3_tiny[1].items()}


@pytest.fixture(scope="module")
def prompts(qwen3_tiny):
    return encode_prompts(qwen3_tiny[0])


def oracle(qwen3_tiny, maps, ids, alpha, map_name="alpha_map", n=24):
    return hf_steered_generate(qwen3_tiny[0], ids, n, maps[map_name], alpha)


def complete(client, ids, n=24, **fields):
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=n, temperature=0.0,
                                  extra_body={"ignore_eos": True, "return_token_ids": True,
                                              **fields})
    return r.model_dump()


def chat_messages():
    return [{"role": "user", "content": "Question: what is 12 + 7? Thinking:"}]


# ---- generation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "alpha,map_name", [(0.3, "alpha_map"), (-1.0, "beta_map"), (4.0, "alpha_map")]
)
def test_completion_steer_alpha_gives_the_oracles_tokens(client, qwen3_tiny, maps, prompts,
                                                         alpha, map_name):
    r = complete(client, prompts[0], steer_alpha=alpha, steer_map=map_name)
    assert r["choices"][0]["token_ids"] == oracle(qwen3_tiny, maps, prompts[0], alpha, map_name)
    assert r["steering"] == {"map": map_name, "alpha": alpha, "applied": True, "mode": "always",
                             "positions": "from_last_prompt"}


def test_chat_steer_alpha_gives_the_oracles_tokens(client, qwen3_tiny, maps):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen3_tiny[0]))
    ids = tok.apply_chat_template(chat_messages(), add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    r = client.chat.completions.create(
        model=MODEL, messages=chat_messages(), max_tokens=24, temperature=0.0,
        extra_body={"steer_alpha": 0.3, "ignore_eos": True, "return_token_ids": True},
    ).model_dump()
    assert r["choices"][0]["token_ids"] == oracle(qwen3_tiny, maps, ids, 0.3)
    assert r["steering"]["applied"] is True


def test_alpha_zero_equals_sending_no_steering_field(client, prompts):
    zero = complete(client, prompts[1], steer_alpha=0.0)
    none = complete(client, prompts[1])
    assert zero["choices"][0]["token_ids"] == none["choices"][0]["token_ids"]
    assert zero["steering"] == none["steering"] == {
        "map": "alpha_map", "alpha": 0.0, "applied": False, "mode": "always",
        "positions": "from_last_prompt"}


def test_steering_changes_the_output(client, prompts):
    plain = complete(client, prompts[0])["choices"][0]["token_ids"]
    steered = complete(client, prompts[0], steer_alpha=4.0)["choices"][0]["token_ids"]
    assert plain != steered


def test_mode_off_disables_steering(client, prompts):
    off = complete(client, prompts[0], steer_alpha=4.0, steer_mode="off")
    assert off["steering"]["applied"] is False
    assert off["choices"][0]["token_ids"] == complete(client, prompts[0])["choices"][0]["token_ids"]


def test_vllm_xargs_mean_the_same_as_the_fields(client, prompts):
    fields = complete(client, prompts[0], steer_alpha=-1.0, steer_map="beta_map")
    xargs = complete(client, prompts[0], vllm_xargs={"steer_alpha": -1.0, "steer_map": "beta_map"})
    assert fields["choices"][0]["token_ids"] == xargs["choices"][0]["token_ids"]
    assert fields["steering"] == xargs["steering"]


def test_streamed_completion_equals_the_unstreamed_one_and_ends_with_what_was_applied(
    client, prompts
):
    whole = complete(client, prompts[0], steer_alpha=0.3)
    chunks = list(client.completions.create(
        model=MODEL, prompt=prompts[0], max_tokens=24, temperature=0.0, stream=True,
        extra_body={"ignore_eos": True, "steer_alpha": 0.3}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole["choices"][0]["text"]
    assert chunks[-1].model_dump()["steering"] == whole["steering"]
    assert all("steering" not in c.model_dump() for c in chunks[:-1])


def test_streamed_chat_equals_the_unstreamed_one_and_ends_with_what_was_applied(client):
    kw = dict(model=MODEL, messages=chat_messages(), max_tokens=24, temperature=0.0)
    extra = {"ignore_eos": True, "steer_alpha": -1.0, "steer_map": "beta_map"}
    whole = client.chat.completions.create(**kw, extra_body=extra).model_dump()
    chunks = list(client.chat.completions.create(**kw, stream=True, extra_body=extra))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1].model_dump()["steering"] == {
        "map": "beta_map", "alpha": -1.0, "applied": True, "mode": "always",
        "positions": "from_last_prompt"}


def test_64_concurrent_mixed_requests_each_equal_their_solo_run(server, prompts):
    combos = [(a, m) for a in (0.0, 0.3, -1.0, 4.0) for m in ("alpha_map", "beta_map")]
    bodies = [
        {"model": MODEL, "prompt": prompts[i % len(prompts)], "max_tokens": 16,
         "temperature": 0.0, "ignore_eos": True, "return_token_ids": True,
         "steer_alpha": combos[i % len(combos)][0], "steer_map": combos[i % len(combos)][1]}
        for i in range(64)
    ]

    async def run_all():
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=300) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
        return [r.json()["choices"][0]["token_ids"] for r in rs]

    together = asyncio.run(run_all())
    with httpx.Client(base_url=server, headers=AUTH, timeout=300) as c:
        alone = [c.post("/v1/completions", json=b).json()["choices"][0]["token_ids"]
                 for b in bodies]
    assert together == alone


# ---- bad requests --------------------------------------------------------------------

BAD_REQUESTS = [
    ({"steer_alpha": "abc"}, "steer_alpha"),
    ({"steer_alpha": "0.3"}, "steer_alpha"),
    ({"steer_alpha": True}, "steer_alpha"),
    ({"steer_alpha": [0.3]}, "steer_alpha"),
    ({"steer_alpha": {"value": 0.3}}, "steer_alpha"),
    ({"steer_alpha": math.nan}, "steer_alpha"),
    ({"steer_alpha": math.inf}, "steer_alpha"),
    ({"steer_alpha": -math.inf}, "steer_alpha"),
    ({"steer_alpha": 8.5}, "steer_alpha"),
    ({"steer_alpha": -100}, "steer_alpha"),
    ({"steer_map": "nope"}, "steer_map"),
    ({"steer_map": ""}, "steer_map"),
    ({"steer_map": 3}, "steer_map"),
    ({"steer_map": ["alpha_map"]}, "steer_map"),
    ({"steer_mode": "sometimes"}, "steer_mode"),
    ({"steer_mode": 1}, "steer_mode"),
    ({"steer_mode": "adaptive"}, "steer_mode"),
    ({"steer_alpah": 0.3}, "steer_alpah"),
    ({"steer_strength": 1}, "steer_strength"),
    ({"Steer_Alpha": 0.3}, "Steer_Alpha"),
    ({"STEER_MAP": "alpha_map"}, "STEER_MAP"),
    ({"steer-alpha": 0.3}, "steer-alpha"),
    ({"steeralpha": 0.3}, "steeralpha"),
    ({"vllm_xargs": {"steer_alpha": "abc"}}, "steer_alpha"),
    ({"vllm_xargs": {"steer_map": "nope"}}, "steer_map"),
    ({"steer_alpha": 0.3, "vllm_xargs": {"steer_alpha": 0.5}}, "steer_alpha"),
    ({"vllm_xargs": "steer_alpha=0.3"}, "vllm_xargs"),
]


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("fields,field", BAD_REQUESTS, ids=[json.dumps(f) for f, _ in BAD_REQUESTS])
def test_bad_steering_fields_are_a_400_naming_the_field(server, route, fields, field):
    body = {"model": MODEL, "max_tokens": 4, **fields}
    if route == "/v1/completions":
        body["prompt"] = "the answer is"
    else:
        body["messages"] = chat_messages()
    r = httpx.post(server + route, content=json.dumps(body), headers={
        **AUTH, "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert error["type"] == "BadRequestError" and error["code"] == 400


def test_after_bad_requests_the_server_is_healthy_and_serves(server, client, qwen3_tiny, maps,
                                                            prompts):
    for fields, _ in BAD_REQUESTS:
        httpx.post(f"{server}/v1/completions", headers=AUTH, timeout=60,
                   content=json.dumps({"model": MODEL, "prompt": "x", **fields}))
    assert httpx.get(f"{server}/health").status_code == 200
    r = complete(client, prompts[0], steer_alpha=0.3)
    assert r["choices"][0]["token_ids"] == oracle(qwen3_tiny, maps, prompts[0], 0.3)


# ---- auth, listing, metrics, schema --------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/steering/maps", "/metrics", "/openapi.json"])
def test_routes_need_the_api_key(server, headers, path):
    r = httpx.get(server + path, headers=headers)
    assert r.status_code == 401
    assert "API key" in r.json()["error"]["message"]


def test_generation_without_the_api_key_is_refused(server):
    r = httpx.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 401


def test_health_is_open(server):
    assert httpx.get(f"{server}/health").status_code == 200


def test_models_are_listed_with_the_key(server):
    r = httpx.get(f"{server}/v1/models", headers=AUTH)
    assert [m["id"] for m in r.json()["data"]] == [MODEL]


def test_steering_maps_lists_the_loaded_maps(server, maps):
    r = httpx.get(f"{server}/v1/steering/maps", headers=AUTH).json()
    assert [m["name"] for m in r["data"]] == ["alpha_map", "beta_map"]
    first = r["data"][0]
    assert first["default"] is True and first["default_alpha"] == 0.0
    assert first["num_neurons"] == maps["alpha_map"].num_neurons
    assert first["layers"] == [{"layer": 1, "neurons": 16}, {"layer": 2, "neurons": 16}]
    assert first["fingerprint"] == maps["alpha_map"].fingerprint()
    assert r["max_steer_alpha"] == 8.0


def _metric(text: str, name: str, map_name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{map="{map_name}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_steered_requests_and_tokens_by_map(server, client, prompts):
    before = httpx.get(f"{server}/metrics", headers=AUTH).text
    complete(client, prompts[0], n=10, steer_alpha=0.3, steer_map="beta_map")
    complete(client, prompts[0], n=10, steer_alpha=0.0, steer_map="beta_map")  # not steered
    after = httpx.get(f"{server}/metrics", headers=AUTH).text
    name = "adaras_steered_requests_total"
    assert _metric(after, name, "beta_map") - _metric(before, name, "beta_map") == 1
    tokens = "adaras_steered_tokens_total"
    assert _metric(after, tokens, "beta_map") - _metric(before, tokens, "beta_map") == 10
    assert "vllm:" in after  # vLLM's own metrics are still there


def test_openapi_documents_the_steering_fields(server):
    doc = httpx.get(f"{server}/openapi.json", headers=AUTH).json()
    schema = doc["components"]["schemas"]
    for path in ("/v1/chat/completions", "/v1/completions"):
        ok = doc["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]
        assert ok["schema"]["properties"]["steering"]["$ref"].endswith("/SteeringApplied")
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = schema[name]["properties"]
        alpha, null = props["steer_alpha"]["anyOf"]
        assert alpha["maximum"] == 8.0 and null == {"type": "null"}
        assert props["steer_map"]["anyOf"][0]["enum"] == ["alpha_map", "beta_map"]
        assert "always" in props["steer_mode"]["anyOf"][0]["enum"]
        assert props["steer_positions"]["anyOf"][0]["enum"] == [
            "from_last_prompt", "last_prompt", "generated"]
    assert set(schema["SteeringApplied"]["properties"]) == {
        "map", "alpha", "applied", "mode", "positions", "gate_score", "gate_threshold"}


# ---- every route, one decision -------------------------------------------------------

USER = [{"role": "user", "content": "Question: what is 12 + 7? Thinking:"}]
ROUTE_BODIES = {
    "/v1/responses": {"model": MODEL, "input": "Question: what is 12 + 7?",
                      "max_output_tokens": 8},
    "/v1/messages": {"model": MODEL, "max_tokens": 8, "messages": USER},
    "/invocations": {"model": MODEL, "max_tokens": 8, "messages": USER},
    "/v1/chat/completions/batch": {"model": MODEL, "max_tokens": 8, "messages": [USER, USER]},
    "/api/v1/chat/completions": {"model": MODEL, "max_tokens": 8, "messages": USER},
    "/api/v1/completions": {"model": MODEL, "max_tokens": 8, "prompt": "the answer is"},
}


def _post(server, path, body, **headers):
    return httpx.post(server + path, content=json.dumps(body), timeout=120,
                      headers={**AUTH, "Content-Type": "application/json", **headers})


@pytest.mark.parametrize("fields", [{"steer_alpha": 1e30}, {"vllm_xargs": {"steer_alpha": 100}},
                                    {"steer_alpha": "abc"}], ids=["field", "xargs", "string"])
@pytest.mark.parametrize("path", list(ROUTE_BODIES))
def test_every_generation_route_refuses_a_bad_alpha(server, path, fields):
    r = _post(server, path, {**ROUTE_BODIES[path], **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "steer_alpha"


@pytest.mark.parametrize("fields", [{"steer_positions": "sometimes"},
                                    {"vllm_xargs": {"steer_positions": 3}}],
                         ids=["field", "xargs"])
@pytest.mark.parametrize("path", list(ROUTE_BODIES))
def test_every_generation_route_refuses_bad_positions_naming_the_field(server, path, fields):
    r = _post(server, path, {**ROUTE_BODIES[path], **fields})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "steer_positions"
    assert "from_last_prompt, last_prompt, generated" in r.json()["error"]["message"]


def test_the_steering_object_reports_the_positions_used(server):
    r = _post(server, "/api/v1/completions", {**ROUTE_BODIES["/api/v1/completions"],
                                              "steer_alpha": 0.3, "steer_positions": "generated"})
    assert r.status_code == 200, r.text
    assert r.json()["steering"]["positions"] == "generated"


@pytest.mark.parametrize("path", list(ROUTE_BODIES))
def test_every_generation_route_reports_the_steering_it_applied(server, path):
    r = _post(server, path, {**ROUTE_BODIES[path], "steer_alpha": 0.3, "steer_map": "beta_map"})
    assert r.status_code == 200, r.text
    assert r.json()["steering"] == {"map": "beta_map", "alpha": 0.3, "applied": True,
                                    "mode": "always", "positions": "from_last_prompt"}


def test_the_responses_route_steers_like_chat(server):
    """Same prompt through the same chat template: same tokens at the same alpha."""
    chat = _post(server, "/v1/chat/completions", {**ROUTE_BODIES["/v1/chat/completions/batch"],
                                                  "messages": USER, "temperature": 0,
                                                  "steer_alpha": 4.0}).json()
    resp = _post(server, "/v1/responses", {"model": MODEL, "input": USER, "temperature": 0,
                                           "max_output_tokens": 8, "steer_alpha": 4.0}).json()
    text = resp["output"][-1]["content"][0]["text"]
    assert text == chat["choices"][0]["message"]["content"]


def test_a_streamed_response_ends_with_what_was_applied(server):
    body = {**ROUTE_BODIES["/v1/responses"], "stream": True, "steer_alpha": 0.3}
    with httpx.stream("POST", f"{server}/v1/responses", json=body, headers=AUTH,
                      timeout=120) as r:
        events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["type"] == "response.completed"
    assert last["steering"]["applied"] is True
    assert all("steering" not in json.loads(e.removeprefix("data: ")) for e in events[:-1])


def test_a_route_that_does_not_generate_refuses_steering_fields(server):
    r = _post(server, "/tokenize", {"model": MODEL, "prompt": "x", "steer_alpha": 0.3})
    assert r.status_code == 400
    assert "/tokenize does not apply steering" in r.json()["error"]["message"]


def test_beam_search_with_steering_is_refused(server):
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "the answer is",
                                          "max_tokens": 4, "use_beam_search": True, "n": 2,
                                          "steer_alpha": 4.0})
    assert r.status_code == 400
    assert "beam search" in r.json()["error"]["message"]


def test_beam_search_without_steering_is_served_and_reported_unsteered(server):
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "the answer is",
                                          "max_tokens": 4, "use_beam_search": True, "n": 2})
    assert r.status_code == 200, r.text
    assert r.json()["steering"]["applied"] is False


def test_a_reused_request_id_gets_its_own_steering(server, prompts):
    body = {"model": MODEL, "prompt": prompts[0], "max_tokens": 16, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True}
    plain = _post(server, "/v1/completions", body).json()["choices"][0]["token_ids"]
    steered = _post(server, "/v1/completions", {**body, "steer_alpha": 4.0},
                    **{"X-Request-Id": "reused-id"}).json()["choices"][0]["token_ids"]
    again = _post(server, "/v1/completions", {**body, "steer_alpha": 0.0},
                  **{"X-Request-Id": "reused-id"}).json()["choices"][0]["token_ids"]
    assert steered != plain
    assert again == plain


def test_root_path_requests_are_validated_and_health_stays_open(server):
    r = _post(server, "/api/v1/chat/completions", {**ROUTE_BODIES["/api/v1/chat/completions"],
                                                   "steer_alpha": "abc"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steer_alpha"
    assert httpx.get(f"{server}/api/health").status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/metrics/anything", "/v1/models"])
def test_options_without_the_key_is_refused(server, path):
    r = httpx.options(server + path)
    assert r.status_code == 401
    assert "adaras_" not in r.text


def test_a_cors_preflight_passes_without_the_key_and_reveals_nothing(server):
    r = httpx.options(f"{server}/metrics", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "GET"})
    assert r.status_code != 401
    assert "adaras_" not in r.text and "vllm:" not in r.text


def test_rejected_requests_are_counted_under_a_bounded_label(server):
    long_key = "steer_" + "x" * 3000
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "x", long_key: 1})
    assert r.status_code == 400
    metrics = httpx.get(f"{server}/metrics", headers=AUTH).text
    assert "x" * 100 not in metrics
    assert 'adaras_rejected_requests_total{field="unknown_steer_field"}' in metrics


def test_an_integer_alpha_of_400_digits_is_a_400_naming_the_field(server):
    raw = '{"model": "%s", "prompt": "x", "max_tokens": 2, "steer_alpha": %s}' % (MODEL, "9" * 400)
    r = httpx.post(f"{server}/v1/completions", content=raw, timeout=60,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steer_alpha"


def test_deeply_nested_json_is_a_400_not_a_server_error(server):
    raw = '{"model": "%s", "prompt": "x", "a": %s%s}' % (MODEL, "[" * 50000, "]" * 50000)
    r = httpx.post(f"{server}/v1/completions", content=raw, timeout=60,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400


def test_a_body_over_the_limit_is_a_413_and_the_server_serves_on(server, client, prompts):
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "x" * (2 << 20)})
    assert r.status_code == 413
    assert complete(client, prompts[1], n=4)["choices"][0]["text"] is not None


def test_openapi_documents_the_steering_fields_on_every_route_that_takes_them(server):
    doc = httpx.get(f"{server}/openapi.json", headers=AUTH).json()
    schema = doc["components"]["schemas"]
    with_fields = {name for name, c in schema.items() if "steer_alpha" in c.get("properties", {})}
    assert {"ChatCompletionRequest", "CompletionRequest", "ResponsesRequest"} <= with_fields


def test_per_request_steering_state_does_not_outlive_its_requests(server, prompts):
    """After a burst and one last request, a worker tracks at most that last request (it
    learns of a finish at its next step)."""
    async def burst():
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=300) as c:
            await asyncio.gather(*(c.post("/v1/completions", json={
                "model": MODEL, "prompt": prompts[i % 4], "max_tokens": 4,
                "steer_alpha": 0.3 * (i % 3)}) for i in range(40)))

    asyncio.run(burst())
    _post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
    status = httpx.get(f"{server}/v1/steering/status", headers=AUTH).json()
    assert status["ranks"][0]["installed"] is True
    assert status["ranks"][0]["layers"] == [1, 2, 3]
    assert status["tracked_requests"] <= 1


@pytest.mark.parametrize("content_type", ["Application/JSON", "application/json; charset=utf-8",
                                          "APPLICATION/JSON;charset=UTF-8"])
def test_a_content_type_in_any_spelling_is_still_validated(server, content_type):
    r = httpx.post(f"{server}/v1/completions", timeout=60, headers={
        **AUTH, "Content-Type": content_type},
        content=json.dumps({"model": MODEL, "prompt": "x", "steer_alpha": 1e9}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "steer_alpha"


def test_two_content_type_headers_are_refused(server):
    headers = [("Authorization", f"Bearer {KEY}"), ("Content-Type", "application/json"),
               ("Content-Type", "text/plain")]
    r = httpx.post(f"{server}/v1/completions", headers=headers, timeout=60,
                   content=json.dumps({"model": MODEL, "prompt": "x", "steer_alpha": 1e9}))
    assert r.status_code == 400


def test_a_streamed_chat_with_beam_search_and_steering_is_a_400_before_the_stream(server):
    r = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 4,
                                               "stream": True, "use_beam_search": True, "n": 2,
                                               "steer_alpha": 2.0})
    assert r.status_code == 400 and "beam search" in r.json()["error"]["message"]


def test_a_background_response_with_steering_is_refused(server):
    r = _post(server, "/v1/responses", {**ROUTE_BODIES["/v1/responses"], "background": True,
                                        "steer_alpha": 0.3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "steer_alpha"


def test_null_means_absent_at_the_top_level_and_in_vllm_xargs(server, prompts):
    absent = complete_raw(server, prompts[1])
    for fields in ({"steer_alpha": None}, {"vllm_xargs": {"steer_alpha": None}},
                   {"steer_alpha": 0.5, "vllm_xargs": {"steer_alpha": None}}):
        r = _post(server, "/v1/completions", {**_completion(prompts[1]), **fields})
        assert r.status_code == 200, (fields, r.text)
        expected = 0.5 if fields.get("steer_alpha") == 0.5 else absent["steering"]["alpha"]
        assert r.json()["steering"]["alpha"] == expected


def test_a_body_that_is_not_json_is_a_400_in_the_openai_error_shape(server):
    r = httpx.post(f"{server}/v1/chat/completions", content=b"{not json", timeout=60,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "body"


def test_requests_the_client_abandons_are_not_counted_as_rejected(server):
    def rejected() -> float:
        text = httpx.get(f"{server}/metrics", headers=AUTH).text
        return sum(float(ln.split()[-1]) for ln in text.splitlines()
                   if ln.startswith("adaras_rejected_requests_total"))

    before = rejected()

    async def abandon():
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=60) as c:
            for delay in (0.002, 0.02, 0.05, 0.1, 0.2):
                task = asyncio.ensure_future(c.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": USER, "max_tokens": 32, "steer_alpha": 2}))
                await asyncio.sleep(delay)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(abandon())
    import time

    time.sleep(2)
    assert rejected() == before


def _completion(ids):
    return {"model": MODEL, "prompt": ids, "max_tokens": 8, "temperature": 0.0,
            "ignore_eos": True}


def complete_raw(server, ids):
    return _post(server, "/v1/completions", _completion(ids)).json()


UNRENDERABLE_INPUTS = {
    "function_call_output with an empty input_file": [
        {"type": "function_call_output", "id": "", "status": "completed",
         "output": [{"type": "input_file", "detail": None}]}],
    "assistant message without content": [
        {"type": "message", "role": "assistant", "id": "", "status": "completed",
         "content": []}],
    "assistant refusal part": [
        {"type": "message", "role": "assistant", "id": "", "status": "completed",
         "content": [{"type": "refusal", "refusal": ""}]}],
}


@pytest.mark.parametrize("name", list(UNRENDERABLE_INPUTS))
def test_responses_input_that_crashes_vllms_renderer_is_a_400_naming_input(server, name):
    """Found by schema fuzzing: vLLM 0.32 answers these with a 500 and no message."""
    r = _post(server, "/v1/responses", {"model": MODEL, "max_output_tokens": 4,
                                        "input": UNRENDERABLE_INPUTS[name]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "input"
