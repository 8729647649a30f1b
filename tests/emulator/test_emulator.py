"""The vLLM emulator, seen from outside: HTTP, metrics and log lines of a real subprocess."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import random
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .support import AUTH, MODEL, Launcher, RunningEmulator, metric, wait_for

REQUIRED_METRICS = {
    # family name -> the type prometheus_client's parser must see
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
}


def chat(max_tokens: int | None = 8, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say something short about queues."}],
        **extra,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def sse_events(text: str) -> list[str]:
    """The data fields of an SSE body; every event must be one `data:` line and a blank line."""
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


# -- health, models, startup -----------------------------------------------------------------


def test_health_answers_503_until_the_model_is_loaded(start_emulator: Launcher) -> None:
    # Fail mode "unready" stalls the load at a known point, so "still loading" is a condition
    # the test can wait for instead of a race against a timer.
    emulator = start_emulator("--fail-mode", "unready")
    wait_for(lambda: "No available shared memory broadcast block" in emulator.log(), "the load to stall")

    assert emulator.health() == 503
    models = emulator.get("/v1/models", headers=AUTH)
    assert models.status_code == 503
    assert models.headers["Retry-After"]
    assert emulator.post("/v1/chat/completions", headers=AUTH, json=chat()).status_code == 503
    assert "Application startup complete." not in emulator.log()

    switched = emulator.post("/_emulator/fail-mode", json={"mode": "none"})
    assert switched.status_code == 200
    emulator.wait_healthy()
    assert "Application startup complete." in emulator.log()
    assert emulator.get("/v1/models", headers=AUTH).status_code == 200


def test_models_lists_the_served_model_name(emulator: RunningEmulator) -> None:
    response = emulator.get("/v1/models", headers=AUTH)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == MODEL
    assert card["object"] == "model"
    assert card["owned_by"] == "vllm"
    assert card["max_model_len"] == 4096


def test_startup_log_lines_appear_in_vllms_order_and_format(emulator: RunningEmulator) -> None:
    lines = emulator.log().splitlines()
    expected = [
        r"^INFO \d\d-\d\d \d\d:\d\d:\d\d \[__init__\.py:\d+\] Automatically detected platform cuda\.$",
        r"^\(APIServer pid=\d+\) INFO .* vLLM API server version 0\.11\.0$",
        r"^\(EngineCore_DP0 pid=\d+\) INFO .* Starting to load model meta-llama/Llama-3\.1-8B-Instruct\.\.\.$",
        r"Using model weights format \['\*\.safetensors'\]$",
        r"^Fetching 4 files:   0%\|.*\| 0/4 \[00:00<\?, \?it/s\]$",
        r"^model-00001-of-00004\.safetensors:\s+\d+%\|.*\| [\d.]+G/[\d.]+G \[",
        r"^Fetching 4 files:  50%\|.*\| 2/4 \[",
        r"^Fetching 4 files: 100%\|.*\| 4/4 \[",
        r"Time spent downloading weights for meta-llama/Llama-3\.1-8B-Instruct: \d+\.\d{6} seconds$",
        r"^Loading safetensors checkpoint shards:   0% Completed \| 0/4 \[00:00<\?, \?it/s\]$",
        r"^Loading safetensors checkpoint shards: 100% Completed \| 4/4 \[",
        r"^\(EngineCore_DP0 pid=\d+\) INFO .* \[default_loader\.py:\d+\] Loading weights took \d+\.\d\d seconds$",
        r"\[gpu_model_runner\.py:\d+\] Model loading took \d+\.\d{4} GiB and \d+\.\d{6} seconds$",
        r"\[gpu_worker\.py:\d+\] Available KV cache memory: \d+\.\d\d GiB$",
        r"\[kv_cache_utils\.py:\d+\] GPU KV cache size: [\d,]+ tokens$",
        r"Maximum concurrency for 4,096 tokens per request: \d+\.\d\dx$",
        r"Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: \d+$",
        rf"\[api_server\.py:\d+\] Starting vLLM API server 0 on http://127\.0\.0\.1:{emulator.port}$",
        r"^\(APIServer pid=\d+\) INFO:     Started server process \[\d+\]$",
        r"^\(APIServer pid=\d+\) INFO:     Application startup complete\.$",
    ]
    positions = []
    for pattern in expected:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no log line matches {pattern!r}"
        positions.append(hits[0])
    assert positions == sorted(positions), list(zip(expected, positions, strict=True))


def test_it_can_run_in_process_on_a_port_it_picks() -> None:
    # conftest.py at the tests root puts deploy/local on sys.path.
    from vllm_emulator import EmulatorConfig, start_in_thread

    stream = io.StringIO()
    config = EmulatorConfig(
        port=0, served_model_name="in-process", load_seconds=0.2, ttft_ms_mean=5, ttft_ms_p95=10
    )
    with start_in_thread(config, stream) as running:
        running.wait_loaded(timeout=30)
        assert httpx.get(running.url + "/health", timeout=10).status_code == 200
        reply = httpx.post(
            running.url + "/v1/completions",
            json={"model": "in-process", "prompt": "hello", "max_tokens": 3},
            timeout=30,
        )
        assert reply.json()["usage"]["completion_tokens"] == 3
    assert "Application startup complete." in stream.getvalue()
    assert "Application shutdown complete." in stream.getvalue()


# -- completions ---------------------------------------------------------------------------------


def test_a_chat_completion_answers_with_usage(emulator: RunningEmulator) -> None:
    response = emulator.post("/v1/chat/completions", headers=AUTH, json=chat(max_tokens=8))

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8


def test_without_max_tokens_the_answer_stops_by_itself(emulator: RunningEmulator) -> None:
    response = emulator.post("/v1/chat/completions", headers=AUTH, json=chat(max_tokens=None))

    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert 16 <= body["usage"]["completion_tokens"] <= 64


def test_a_streamed_chat_completion_is_sse_ending_in_done(emulator: RunningEmulator) -> None:
    body = chat(max_tokens=6, stream=True, stream_options={"include_usage": True})
    with httpx.stream(
        "POST", emulator.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()

    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"]]
    assert len(content) == 6 and all(content)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6


def test_a_streamed_answer_without_include_usage_has_no_usage_chunk(emulator: RunningEmulator) -> None:
    with httpx.stream(
        "POST",
        emulator.url + "/v1/chat/completions",
        headers=AUTH,
        json=chat(max_tokens=3, stream=True),
        timeout=30,
    ) as response:
        events = sse_events(response.read().decode())

    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_completions_answer_plain_and_streamed(emulator: RunningEmulator) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4}
    plain = emulator.post("/v1/completions", headers=AUTH, json=body).json()
    assert plain["object"] == "text_completion"
    assert plain["id"].startswith("cmpl-")
    assert plain["choices"][0]["text"].strip()
    assert plain["usage"]["completion_tokens"] == 4

    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", emulator.url + "/v1/completions", headers=AUTH, json=streamed, timeout=30
    ) as response:
        events = sse_events(response.read().decode())
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert len(texts) == 4
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_a_request_longer_than_the_context_is_refused(emulator: RunningEmulator) -> None:
    response = emulator.post("/v1/chat/completions", headers=AUTH, json=chat(max_tokens=5000))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert "maximum context length is 4096 tokens" in error["message"]


# -- keys and models -----------------------------------------------------------------------------


def test_a_call_without_a_key_gets_401(emulator: RunningEmulator) -> None:
    for path in ("/v1/models", "/v1/chat/completions"):
        response = emulator.post(path, json=chat()) if "chat" in path else emulator.get(path)
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized"}


def test_a_call_with_a_wrong_key_gets_401(emulator: RunningEmulator) -> None:
    for headers in (
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": "Basic " + AUTH["Authorization"][7:]},
    ):
        response = emulator.post("/v1/chat/completions", headers=headers, json=chat())
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized"}


def test_health_and_metrics_need_no_key(emulator: RunningEmulator) -> None:
    assert emulator.get("/health").status_code == 200
    assert emulator.get("/metrics").status_code == 200


def test_an_unknown_model_gets_404(emulator: RunningEmulator) -> None:
    response = emulator.post("/v1/chat/completions", headers=AUTH, json={**chat(), "model": "gpt-17"})

    assert response.status_code == 404
    error = response.json()["error"]
    assert error == {
        "message": "The model `gpt-17` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


# -- metrics -------------------------------------------------------------------------------------


def test_metrics_parse_and_carry_vllms_names_and_labels(emulator: RunningEmulator) -> None:
    families = {f.name: f for f in text_string_to_metric_families(emulator.metrics())}

    for name, kind in REQUIRED_METRICS.items():
        assert name in families, name
        assert families[name].type == kind, name
        assert families[name].samples, name
        assert all(s.labels["model_name"] == MODEL for s in families[name].samples), name
    buckets = [
        s.labels["le"] for s in families["vllm:time_to_first_token_seconds"].samples if "le" in s.labels
    ]
    assert buckets[:3] == ["0.001", "0.005", "0.01"] and buckets[-2:] == ["2560.0", "+Inf"]
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert {"stop", "length", "abort"} <= reasons
    assert "vllm:gpu_cache_usage_perc" not in families


def test_counters_increase_after_traffic(emulator: RunningEmulator) -> None:
    def snapshot() -> dict[str, float]:
        text = emulator.metrics()
        return {
            "prompt": metric(text, "vllm:prompt_tokens_total", model_name=MODEL),
            "generation": metric(text, "vllm:generation_tokens_total", model_name=MODEL),
            "length": metric(text, "vllm:request_success_total", model_name=MODEL, finished_reason="length"),
            "ttft": metric(text, "vllm:time_to_first_token_seconds_count", model_name=MODEL),
            "e2e": metric(text, "vllm:e2e_request_latency_seconds_count", model_name=MODEL),
            "itl": metric(text, "vllm:inter_token_latency_seconds_count", model_name=MODEL),
        }

    before = snapshot()
    prompt_tokens = 0
    for _ in range(3):
        response = emulator.post("/v1/chat/completions", headers=AUTH, json=chat(max_tokens=5))
        prompt_tokens += response.json()["usage"]["prompt_tokens"]
    after = snapshot()

    assert after["prompt"] - before["prompt"] == prompt_tokens
    assert after["generation"] - before["generation"] == 15
    assert after["length"] - before["length"] == 3
    assert after["ttft"] - before["ttft"] == 3
    assert after["e2e"] - before["e2e"] == 3
    assert after["itl"] - before["itl"] == 12  # four gaps between five tokens, three times


def test_requests_beyond_max_num_seqs_wait_in_the_queue(start_emulator: Launcher) -> None:
    emulator = start_emulator(
        "--max-num-seqs", "1", "--tpot-ms-mean", "20", "--tpot-ms-p95", "30", "--num-gpu-blocks", "16"
    )
    emulator.wait_healthy()

    async def scenario() -> tuple[dict[str, float], list[httpx.Response]]:
        seen = {"running": 0.0, "waiting": 0.0, "kv": 0.0}
        async with httpx.AsyncClient(base_url=emulator.url, timeout=60) as client:
            calls = [
                asyncio.create_task(
                    client.post("/v1/chat/completions", headers=AUTH, json=chat(max_tokens=20))
                )
                for _ in range(4)
            ]
            while not all(call.done() for call in calls):
                text = (await client.get("/metrics")).text
                seen["running"] = max(seen["running"], metric(text, "vllm:num_requests_running"))
                seen["waiting"] = max(seen["waiting"], metric(text, "vllm:num_requests_waiting"))
                seen["kv"] = max(seen["kv"], metric(text, "vllm:kv_cache_usage_perc"))
                await asyncio.sleep(0.01)
            return seen, await asyncio.gather(*calls)

    # On a thread of its own: the browser tests' Playwright (sync API) keeps an event loop
    # running in the main thread for the rest of the session.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        seen, responses = pool.submit(asyncio.run, scenario()).result()

    assert [r.status_code for r in responses] == [200] * 4
    assert seen["waiting"] > 0
    assert seen["running"] == 1
    assert seen["kv"] > 0
    idle = emulator.metrics()
    assert metric(idle, "vllm:num_requests_running") == 0
    assert metric(idle, "vllm:num_requests_waiting") == 0
    assert metric(idle, "vllm:kv_cache_usage_perc") == 0
    assert metric(idle, "vllm:request_queue_time_seconds_count") == 4


def test_a_client_that_leaves_mid_stream_is_counted_as_aborted(emulator: RunningEmulator) -> None:
    def aborted() -> float:
        return metric(
            emulator.metrics(), "vllm:request_success_total", model_name=MODEL, finished_reason="abort"
        )

    before = aborted()
    body = chat(max_tokens=2000, stream=True)
    with httpx.stream(
        "POST", emulator.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=30
    ) as response:
        for line in response.iter_lines():
            if '"content":" ' in line:
                break  # leaving the block closes the connection with the answer unfinished

    wait_for(lambda: aborted() == before + 1, "the request to be counted as aborted")
    wait_for(lambda: metric(emulator.metrics(), "vllm:num_requests_running") == 0, "its slot to be free")


def test_sampled_latencies_match_the_configured_mean_and_p95() -> None:
    from vllm_emulator import LogNormal

    distribution = LogNormal.from_mean_p95(0.120, 0.300)
    rng = random.Random(7)
    samples = sorted(distribution.sample(rng) for _ in range(20_000))

    assert sum(samples) / len(samples) == pytest.approx(0.120, rel=0.05)
    assert samples[int(0.95 * len(samples))] == pytest.approx(0.300, rel=0.05)


def test_legacy_metrics_use_the_names_of_older_vllm(start_emulator: Launcher) -> None:
    emulator = start_emulator("--legacy-metrics")
    emulator.wait_healthy()
    emulator.post("/v1/chat/completions", headers=AUTH, json=chat(max_tokens=3))

    families = {f.name: f for f in text_string_to_metric_families(emulator.metrics())}
    assert {"vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds"} <= families.keys()
    assert not {"vllm:kv_cache_usage_perc", "vllm:inter_token_latency_seconds"} & families.keys()
    assert families["vllm:time_per_output_token_seconds"].type == "histogram"
    assert all("engine" not in s.labels for s in families["vllm:num_requests_running"].samples)
    log = emulator.log()
    assert re.search(r"# GPU blocks: \d+, # CPU blocks: \d+", log)
    assert f"Starting vLLM API server on http://127.0.0.1:{emulator.port}" in log
    missing = emulator.post("/v1/completions", headers=AUTH, json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404
    assert missing.json()["object"] == "error"


# -- fail modes ----------------------------------------------------------------------------------


def test_fail_mode_500_is_healthy_but_cannot_answer(start_emulator: Launcher) -> None:
    emulator = start_emulator("--fail-mode", "500")
    emulator.wait_healthy()

    failed = emulator.post("/v1/chat/completions", headers=AUTH, json=chat())
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "InternalServerError"
    assert emulator.health() == 200

    state = emulator.post("/_emulator/fail-mode", json={"mode": "none"}).json()
    assert state["fail_mode"] == "none"
    assert emulator.post("/v1/chat/completions", headers=AUTH, json=chat()).status_code == 200


def test_the_control_endpoint_refuses_modes_it_cannot_switch_to(emulator: RunningEmulator) -> None:
    for body in ({"mode": "oom-log"}, {"mode": "sideways"}, {}):
        assert emulator.post("/_emulator/fail-mode", json=body).status_code == 400
    assert emulator.get("/_emulator/state").json()["fail_mode"] == "none"


def test_fail_mode_oom_log_logs_cuda_oom_and_exits_non_zero(start_emulator: Launcher) -> None:
    emulator = start_emulator("--fail-mode", "oom-log")

    assert emulator.wait_exit() != 0
    log = emulator.log()
    assert "Loading safetensors checkpoint shards:" in log
    assert re.search(r"torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate \d+\.\d\d GiB", log)
    assert "EngineCore failed to start." in log
    assert "RuntimeError: Engine core initialization failed." in log
    assert "Application startup complete." not in log


def test_fail_mode_hub_401_logs_the_gated_repo_error_and_exits_non_zero(start_emulator: Launcher) -> None:
    emulator = start_emulator("--fail-mode", "hub-401")

    assert emulator.wait_exit() != 0
    log = emulator.log()
    url = "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json"
    assert f"401 Client Error: Unauthorized for url: {url}" in log
    assert "huggingface_hub.errors.GatedRepoError: 401 Client Error." in log
    assert "Access to model meta-llama/Llama-3.1-8B-Instruct is restricted." in log
    assert "Loading safetensors checkpoint shards" not in log
