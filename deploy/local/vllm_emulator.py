#!/usr/bin/env python3
"""A vLLM emulator for the local platform.

One light process per endpoint pod that, seen from outside, behaves like `vllm serve` (the
OpenAI-compatible API server of vLLM 0.11, V1 engine) serving one model, without a GPU:

  - it writes vLLM's startup log lines, in vLLM's format and order, with the model load taking
    --load-seconds: weight download progress, "Loading safetensors checkpoint shards",
    "Loading weights took", "Model loading took", "Available KV cache memory", "GPU KV cache size",
    "Starting vLLM API server", "Application startup complete.";
  - /health answers 503 until the model is loaded, then 200 (see "Deviations");
  - /v1/models, /v1/chat/completions and /v1/completions answer like vLLM, streaming (SSE) and
    `stream_options.include_usage` included, and check the API key like `--api-key` does;
  - TTFT and TPOT are drawn from lognormal distributions fitted to a mean and a p95, and grow with
    the number of running requests; at most --max-num-seqs requests run, the rest wait in a FIFO;
  - /metrics has vLLM's metric names, labels (model_name, engine) and histogram buckets, and the
    KV cache usage follows the blocks the running requests hold;
  - --fail-mode makes it fail the way real pods fail: never ready, 500s, CUDA OOM or a gated
    HuggingFace repo during load.

Run:  python deploy/local/vllm_emulator.py --port 8001 --served-model-name llama-8b \
          --api-key-file key.txt --load-seconds 5 --log-file /tmp/vllm.log
In-process (tests):  Emulator(config) on a running loop, or start_in_thread(config) from sync code.

Control endpoint (emulator only, loopback callers only, no API key):
  POST /_emulator/fail-mode  {"mode": "none" | "unready" | "500"}  switch the fail mode at runtime;
       switching an emulator that is stalled in "unready" to "none" lets its load finish.
  GET  /_emulator/state      loaded, fail mode, running, waiting, KV cache usage.

Deviations from real vLLM, chosen on purpose:
  - Real vLLM binds its HTTP port only after the engine is up (a probe during load gets
    "connection refused"). The emulator listens from the start and answers 503 on /health and on
    /v1/* (with Retry-After) until loaded, because that is what the portal's probes and gate must
    handle behind a gateway anyway; access log lines therefore appear during load too.
  - One process stands in for vLLM's two (APIServer and EngineCore_DP0): both log prefixes carry
    this process's pid.
  - Real vLLM hides the HuggingFace download bars (its DisabledTqdm); the emulator prints
    huggingface_hub's bars (per file, and "Fetching N files: P%|...| k/N"), as `hf download` in an
    init container would, so the watcher's download progress can be exercised
    (--no-download-progress turns them off and leaves only vLLM's own lines).
  - The non-default-args line never contains the API key (real vLLM prints it).
  - Sampling parameters other than max_tokens are ignored; n > 1 and batched prompts get a 400.
  - --legacy-metrics emulates vLLM before 0.10 (V0 engine): vllm:gpu_cache_usage_perc and
    vllm:time_per_output_token_seconds *instead of* the new names, a model_name-only label set,
    the V0 "# GPU blocks" log line and flat error bodies. Histogram buckets are the V1 ones in
    both modes (V0's were shorter lists; quantiles are unaffected for the latencies we emit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import math
import os
import random
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

VLLM_VERSION = "0.11.0"
LEGACY_VLLM_VERSION = "0.8.5"
FAIL_MODES = ("none", "unready", "500", "oom-log", "hub-401")
# oom-log and hub-401 happen during load, so only these make sense on a running emulator.
RUNTIME_FAIL_MODES = ("none", "unready", "500")
FINISH_REASONS = ("stop", "length", "abort")

# vLLM's bucket boundaries (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# Paths vLLM's AuthenticationMiddleware guards; /health, /metrics, /ping, /version stay public.
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")

# How much slower a step gets per other running request. Prefill competes with the whole decode
# batch, so TTFT suffers more than the per-token decode time does.
TTFT_CONTENTION = 0.15
TPOT_CONTENTION = 0.04

PROMPT_TOKENS_PER_WORD = 1.3
# A chat template wraps each message in role markers; roughly this many tokens per message.
CHAT_TEMPLATE_TOKENS_PER_MESSAGE = 4
DEFAULT_MAX_TOKENS_RANGE = (16, 64)

# Per-token KV cache of Llama-3.1-8B in bf16: K and V x 32 layers x 8 KV heads x 128 dims x 2 bytes.
KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
GPU_TOTAL_GIB = 79.19  # what torch reports for an 80 GB H100
GIB = 1024**3

FILLER_WORDS = (
    "The emulator writes deterministic filler tokens so that clients can count what they get "
    "and dashboards can show real moving numbers while no model runs here at all"
).split()

SITE_PACKAGES = "/usr/local/lib/python3.12/dist-packages"


# --------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass
class EmulatorConfig:
    """Everything one emulator needs; the CLI flags map onto these fields one to one."""

    served_model_name: str = "default"
    model: str = ""  # the weights' source as vLLM's --model would get it; the served name if empty
    host: str = "127.0.0.1"
    port: int = 8000  # 0 picks a free port (in-process use)
    api_key: str | None = None
    load_seconds: float = 5.0
    weights_cached: bool = False  # skip the download phase, as with weights already on a PVC
    download_progress: bool = True
    max_num_seqs: int = 8
    max_model_len: int = 4096
    block_size: int = 16
    num_gpu_blocks: int | None = None  # derived from max_model_len x max_num_seqs when not given
    weights_gib: float = 14.99
    num_shards: int = 4
    ttft_ms_mean: float = 120.0
    ttft_ms_p95: float = 300.0
    tpot_ms_mean: float = 25.0
    tpot_ms_p95: float = 40.0
    fail_mode: str = "none"
    legacy_metrics: bool = False
    seed: int | None = None
    stats_interval: float = 10.0
    access_log: bool = True
    shutdown_timeout: float = 10.0

    def __post_init__(self) -> None:
        problems = []
        if not self.served_model_name:
            problems.append("--served-model-name must not be empty")
        if self.fail_mode not in FAIL_MODES:
            problems.append(f"--fail-mode must be one of {', '.join(FAIL_MODES)}")
        if self.load_seconds < 0:
            problems.append("--load-seconds must be >= 0")
        for name in ("max_num_seqs", "max_model_len", "block_size", "num_shards"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 1:
            problems.append("--num-gpu-blocks must be >= 1")
        for kind in ("ttft", "tpot"):
            mean, p95 = getattr(self, f"{kind}_ms_mean"), getattr(self, f"{kind}_ms_p95")
            if mean <= 0 or p95 < mean:
                problems.append(f"--{kind}-ms-mean must be > 0 and --{kind}-ms-p95 >= it")
        try:
            if not ipaddress.ip_address(self.host).is_loopback:
                problems.append("--host must be a loopback address")
        except ValueError:
            problems.append("--host must be a loopback IP address")
        if problems:
            raise ValueError("; ".join(problems))
        if not self.model:
            self.model = self.served_model_name

    @property
    def gpu_blocks(self) -> int:
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        # Room for every sequence at full length plus a quarter: what a well-sized pod reports.
        return math.ceil(self.max_model_len * self.max_num_seqs * 1.25 / self.block_size)

    @property
    def hub_repo(self) -> str:
        return self.model.removeprefix("hf://")


@dataclasses.dataclass(frozen=True)
class LogNormal:
    """A lognormal distribution fitted to a mean and a 95th percentile, in seconds."""

    mu: float
    sigma: float

    @classmethod
    def from_mean_p95(cls, mean: float, p95: float) -> LogNormal:
        # mean = exp(mu + s^2/2) and p95 = exp(mu + z s), so s^2/2 - z s + ln(p95/mean) = 0;
        # the smaller root is the one that fits. A p95 more than ~3.9x the mean has no solution:
        # take the widest spread the mean allows.
        z = 1.6448536269514722
        d = math.log(p95 / mean)
        disc = z * z - 2 * d
        sigma = z - math.sqrt(disc) if disc > 0 else z
        return cls(mu=math.log(mean) - sigma * sigma / 2, sigma=max(sigma, 0.0))

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


# --------------------------------------------------------------------------------------------
# vLLM-style log lines


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _bar(fraction: float, width: int = 10) -> str:
    # tqdm's unicode bar: full blocks, then one partial block.
    filled = fraction * width
    full = int(filled)
    partial = " ▏▎▍▌▋▊▉"[int((filled - full) * 8)] if full < width else ""
    return ("█" * full + partial).ljust(width)


def _rate(items: int, elapsed: float) -> str:
    if items == 0 or elapsed <= 0:
        return "?it/s"
    per_item = elapsed / items
    return f"{per_item:5.2f}s/it" if per_item >= 1 else f"{items / elapsed:5.2f}it/s"


class VllmLog:
    """Writes lines the way vLLM's loggers and uvicorn do, one flush per line.

    V1 vLLM (0.10+) prefixes every line with the process it came from; V0 did not.
    """

    def __init__(self, stream: TextIO, legacy: bool) -> None:
        self.stream = stream
        self.legacy = legacy
        self.pid = os.getpid()
        self._lock = threading.Lock()

    def _prefix(self, proc: str) -> str:
        if self.legacy:
            return ""
        return f"({proc} pid={self.pid}) "

    def raw(self, line: str, proc: str | None = None) -> None:
        text = (self._prefix(proc) if proc else "") + line
        with self._lock:
            try:
                self.stream.write(text + "\n")
                self.stream.flush()
            except (ValueError, OSError):
                pass  # the stream was closed under us during shutdown; nothing left to tell

    def line(self, proc: str, source: str, message: str, level: str = "INFO") -> None:
        stamp = time.strftime("%m-%d %H:%M:%S")
        for part in message.split("\n"):
            self.raw(f"{level} {stamp} [{source}] {part}", proc)

    def api(self, source: str, message: str, level: str = "INFO") -> None:
        self.line("APIServer", source, message, level)

    def engine(self, source: str, message: str, level: str = "INFO") -> None:
        self.line("EngineCore_DP0", source, message, level)

    def uvicorn(self, message: str) -> None:
        self.raw(f"INFO:     {message}", "APIServer")


# --------------------------------------------------------------------------------------------
# metrics


def _buckets_1_2_5(max_value: int) -> list[int]:
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


class Metrics:
    """vLLM's Prometheus metrics, in a registry of their own so emulators never share series."""

    def __init__(self, config: EmulatorConfig, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        # vLLM serves the default registry, so the process and GC families come along.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        legacy = config.legacy_metrics
        names = ["model_name"] if legacy else ["model_name", "engine"]
        values = [config.served_model_name] if legacy else [config.served_model_name, "0"]
        reg = self.registry

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, names, registry=reg).labels(*values).set_function(read)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[int]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=reg).labels(*values)

        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            lambda: engine.running,
        )
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            lambda: engine.waiting,
        )
        if legacy:
            gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", lambda: 0)
            gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                engine.kv_cache_usage,
            )
            gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", lambda: 0)
        else:
            gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                engine.kv_cache_usage,
            )

        self.num_preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        # vLLM creates one child per finish reason up front, so the series exist at 0.
        self.request_success = {reason: success.labels(*values, reason) for reason in FINISH_REASONS}

        token_buckets = _buckets_1_2_5(config.max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        if legacy:
            self.token_latency = histogram(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                TOKEN_LATENCY_BUCKETS,
            )
        else:
            self.token_latency = histogram(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                TOKEN_LATENCY_BUCKETS,
            )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        info = {
            "block_size": str(config.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": "True",
            "gpu_memory_utilization": "0.9",
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(config.gpu_blocks),
        }
        if not legacy:
            info["engine"] = "0"
        Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            list(info),
            registry=reg,
        ).labels(**info).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------------
# the engine: a FIFO scheduler with max_num_seqs slots and sampled step times


@dataclasses.dataclass
class GenerationRequest:
    prompt_tokens: int
    max_tokens: int
    finish_reason: str  # what it ends with if it is not aborted
    request_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


class Engine:
    """Scheduling, latency and accounting; knows nothing about HTTP."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        # Latency jitter for an emulator, not anything security-related.
        self.rng = random.Random(config.seed)  # noqa: S311
        self.ttft = LogNormal.from_mean_p95(config.ttft_ms_mean / 1000, config.ttft_ms_p95 / 1000)
        self.tpot = LogNormal.from_mean_p95(config.tpot_ms_mean / 1000, config.tpot_ms_p95 / 1000)
        self.running = 0
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None
        self._held_tokens: dict[str, int] = {}
        self.metrics = Metrics(config, self)
        # Totals since the last stats log line.
        self.interval_prompt_tokens = 0
        self.interval_generation_tokens = 0

    def kv_cache_usage(self) -> float:
        blocks = sum(math.ceil(t / self.config.block_size) for t in self._held_tokens.values())
        return min(1.0, blocks / self.config.gpu_blocks)

    def default_max_tokens(self) -> int:
        return self.rng.randint(*DEFAULT_MAX_TOKENS_RANGE)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[str]:
        """Yield the request's output tokens at the pace a loaded vLLM would.

        The caller must close the generator (contextlib.aclosing) so that a client that goes
        away releases its slot and is counted as aborted at once.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_num_seqs)
        arrival = time.monotonic()
        self.waiting += 1
        try:
            # asyncio.Semaphore wakes waiters in FIFO order, like vLLM's default scheduler.
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        scheduled = time.monotonic()
        self._held_tokens[req.request_id] = req.prompt_tokens
        first = last = scheduled
        emitted = 0
        finish_reason = "abort"
        try:
            prefill = self.ttft.sample(self.rng) * (1 + TTFT_CONTENTION * (self.running - 1))
            await asyncio.sleep(prefill)
            first = last = time.monotonic()
            # vLLM's TTFT runs from arrival, so queueing shows up in it.
            self.metrics.ttft.observe(first - arrival)
            self.metrics.prompt_tokens.inc(req.prompt_tokens)
            self.interval_prompt_tokens += req.prompt_tokens
            for index in range(req.max_tokens):
                if index:
                    step = self.tpot.sample(self.rng) * (1 + TPOT_CONTENTION * (self.running - 1))
                    await asyncio.sleep(step)
                    now = time.monotonic()
                    self.metrics.token_latency.observe(now - last)
                    last = now
                self._held_tokens[req.request_id] += 1
                self.metrics.generation_tokens.inc()
                self.interval_generation_tokens += 1
                emitted += 1
                yield filler_token(index)
            finish_reason = req.finish_reason
        finally:
            finished = time.monotonic()
            self._held_tokens.pop(req.request_id, None)
            self.running -= 1
            self._slots.release()
            m = self.metrics
            m.request_success[finish_reason].inc()
            m.e2e.observe(finished - arrival)
            m.queue_time.observe(scheduled - arrival)
            m.inference_time.observe(finished - scheduled)
            m.prefill_time.observe(first - scheduled)
            m.decode_time.observe(max(0.0, finished - first))
            m.request_prompt_tokens.observe(req.prompt_tokens)
            m.request_generation_tokens.observe(emitted)


def filler_token(index: int) -> str:
    return " " + FILLER_WORDS[index % len(FILLER_WORDS)]


def count_words_as_tokens(text: str) -> int:
    return math.ceil(len(text.split()) * PROMPT_TOKENS_PER_WORD)


# --------------------------------------------------------------------------------------------
# request parsing


class RequestError(Exception):
    """A request vLLM would refuse; carries the status and the OpenAI-style error type."""

    def __init__(
        self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    raise RequestError(400, "message content must be a string or a list of content parts", param="messages")


def chat_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", param="messages")
    total = CHAT_TEMPLATE_TOKENS_PER_MESSAGE  # the assistant turn the template opens
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(400, "each message needs a role", param="messages")
        total += CHAT_TEMPLATE_TOKENS_PER_MESSAGE + count_words_as_tokens(
            _message_text(message.get("content"))
        )
    return total


def completion_prompt_tokens(body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return max(1, count_words_as_tokens(prompt))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise RequestError(400, "batched prompts are not supported by the emulator", param="prompt")
    raise RequestError(400, "prompt must be a string or a list of token ids", param="prompt")


# --------------------------------------------------------------------------------------------
# the server


class Emulator:
    """An emulated vLLM server: HTTP from start(), model load in the background."""

    def __init__(self, config: EmulatorConfig, stream: TextIO | None = None) -> None:
        self.config = config
        self.log = VllmLog(stream or sys.stdout, config.legacy_metrics)
        self.engine = Engine(config)
        self.fail_mode = config.fail_mode
        self.loaded = False
        self.version = LEGACY_VLLM_VERSION if config.legacy_metrics else VLLM_VERSION
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._unstall: asyncio.Event | None = None
        self._loaded_event: asyncio.Event | None = None
        self._fatal: asyncio.Future[int] | None = None
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator has not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Bind the HTTP port, then start loading the model in the background."""
        loop = asyncio.get_running_loop()
        self._unstall = asyncio.Event()
        self._loaded_event = asyncio.Event()
        self._fatal = loop.create_future()
        app = web.Application(middlewares=[self._access_log_middleware, self._auth_middleware])
        app.add_routes(
            [
                web.get("/health", self._health),
                web.get("/ping", self._health),
                web.post("/ping", self._health),
                web.get("/load", self._load),
                web.get("/version", self._version),
                web.get("/metrics", self._metrics),
                web.get("/v1/models", self._models),
                web.post("/v1/chat/completions", self._chat_completions),
                web.post("/v1/completions", self._completions),
                web.post("/_emulator/fail-mode", self._set_fail_mode),
                web.get("/_emulator/state", self._state),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.config.shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        self._tasks.append(asyncio.create_task(self._load_model(), name="vllm-emulator-load"))

    async def wait_loaded(self) -> None:
        assert self._loaded_event is not None, "start() first"
        await self._loaded_event.wait()

    async def wait_fatal(self) -> int:
        """Resolve with the exit code when the load fails the way it would kill a real pod."""
        assert self._fatal is not None, "start() first"
        return await asyncio.shield(self._fatal)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.loaded:
            self.log.api("launcher.py:101", "Shutting down FastAPI HTTP server.")
            self.log.uvicorn("Shutting down")
            self.log.uvicorn("Waiting for application shutdown.")
        if self._runner is not None:
            # Drains in-flight requests for up to shutdown_timeout, as uvicorn does on SIGTERM.
            await self._runner.cleanup()
            self._runner = None
        if self.loaded:
            self.log.uvicorn("Application shutdown complete.")
            self.log.uvicorn(f"Finished server process [{self.log.pid}]")

    # -- the load ---------------------------------------------------------------------------------

    async def _load_model(self) -> None:
        try:
            await self._load_steps()
        except _FatalLoad as fatal:
            assert self._fatal is not None
            if not self._fatal.done():
                self._fatal.set_result(fatal.exit_code)

    async def _stall_if_unready(self) -> None:
        """In fail mode `unready` the load hangs here until the mode is switched away.

        A hang during CUDA graph capture is what a wedged NCCL or a tensor-parallel mismatch looks
        like: every loading line is there, the server never comes up. vLLM repeats this warning
        each minute while it waits; the emulator says it once, at once, so tests can wait for it.
        """
        if self.fail_mode != "unready":
            return
        assert self._unstall is not None
        self._unstall.clear()
        self.log.engine(
            "shm_broadcast.py:466",
            "No available shared memory broadcast block found in 60 seconds.",
            level="WARNING",
        )
        await self._unstall.wait()

    async def _load_steps(self) -> None:
        cfg, log = self.config, self.log
        total = cfg.load_seconds
        weights_share = 0.70
        download_time = 0.0 if cfg.weights_cached else total * 0.40
        shards_time = total * weights_share - download_time
        model = cfg.hub_repo

        log.raw(
            f"INFO {time.strftime('%m-%d %H:%M:%S')} [__init__.py:216] Automatically detected platform cuda."
        )
        if self.config.legacy_metrics:
            log.api("api_server.py:1090", f"vLLM API server version {self.version}")
        else:
            log.api("api_server.py:1839", f"vLLM API server version {self.version}")
        args = {
            "model_tag": cfg.model,
            "model": cfg.model,
            "max_model_len": cfg.max_model_len,
            "served_model_name": [cfg.served_model_name],
            "max_num_seqs": cfg.max_num_seqs,
        }
        log.api("utils.py:233", f"non-default args: {args!r}")
        await asyncio.sleep(total * 0.02)
        if self.fail_mode == "hub-401":
            self._log_hub_401()
            raise _FatalLoad(1)

        log.api("model.py:547", "Resolved architecture: LlamaForCausalLM")
        log.api("model.py:1510", f"Using max model len {cfg.max_model_len}")
        log.api("scheduler.py:205", "Chunked prefill is enabled with max_num_batched_tokens=2048.")
        log.engine("core.py:644", "Waiting for init message from front-end.")
        log.engine(
            "core.py:77",
            f"Initializing {'an' if cfg.legacy_metrics else 'a V1'} LLM engine (v{self.version}) with config: "
            f"model='{cfg.model}', "
            f"tokenizer='{cfg.model}', revision=None, dtype=torch.bfloat16, max_seq_len={cfg.max_model_len}, "
            "download_dir=None, load_format=auto, tensor_parallel_size=1, pipeline_parallel_size=1, "
            f"quantization=None, enforce_eager=False, kv_cache_dtype=auto, device_config=cuda, seed=0, "
            f"served_model_name={cfg.served_model_name}, enable_prefix_caching=True, "
            "chunked_prefill_enabled=True",
        )
        log.engine(
            "parallel_state.py:1208",
            "rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, TP rank 0, EP rank 0",
        )
        log.engine("gpu_model_runner.py:2602", f"Starting to load model {cfg.model}...")
        log.engine("gpu_model_runner.py:2634", "Loading model from scratch...")
        log.engine(
            "cuda.py:366", f"Using Flash Attention backend{'' if cfg.legacy_metrics else ' on V1 engine'}."
        )
        await asyncio.sleep(total * 0.03)

        load_started = time.monotonic()
        shard_gib = cfg.weights_gib / cfg.num_shards
        if download_time > 0:
            log.engine("weight_utils.py:392", "Using model weights format ['*.safetensors']")
            await self._download(shard_gib, download_time)
            spent = time.monotonic() - load_started
            log.engine(
                "weight_utils.py:413", f"Time spent downloading weights for {model}: {spent:.6f} seconds"
            )

        weights_started = time.monotonic()
        bar = "Loading safetensors checkpoint shards"
        log.raw(f"{bar}:   0% Completed | 0/{cfg.num_shards} [00:00<?, ?it/s]")
        per_shard = shards_time / cfg.num_shards
        for shard in range(1, cfg.num_shards + 1):
            await asyncio.sleep(per_shard)
            if self.fail_mode == "oom-log" and shard == math.ceil(cfg.num_shards / 2):
                self._log_oom(shard_gib)
                raise _FatalLoad(1)
            elapsed = time.monotonic() - weights_started
            remaining = elapsed / shard * (cfg.num_shards - shard)
            line = (
                f"{bar}: {shard * 100 // cfg.num_shards:3d}% Completed | {shard}/{cfg.num_shards} "
                f"[{_clock(elapsed)}<{_clock(remaining)}, {_rate(shard, elapsed)}]"
            )
            log.raw(line)
            if shard == cfg.num_shards:
                log.raw(line)  # tqdm repeats its final state when it closes
        log.raw("", "EngineCore_DP0")
        weights_took = time.monotonic() - weights_started
        log.engine("default_loader.py:267", f"Loading weights took {weights_took:.2f} seconds")
        model_took = time.monotonic() - load_started
        log.engine(
            "gpu_model_runner.py:2653",
            f"Model loading took {cfg.weights_gib:.4f} GiB and {model_took:.6f} seconds",
        )

        profile_started = time.monotonic()
        compile_cache = hashlib.sha256(cfg.model.encode()).hexdigest()[:10]
        log.engine(
            "backends.py:548",
            f"Using cache directory: /root/.cache/vllm/torch_compile_cache/{compile_cache}/rank_0_0/backbone "
            "for vLLM's torch.compile",
        )
        await asyncio.sleep(total * 0.10)
        compile_took = time.monotonic() - profile_started
        log.engine("monitor.py:34", f"torch.compile takes {compile_took:.2f} s in total")

        blocks = cfg.gpu_blocks
        kv_tokens = blocks * cfg.block_size
        kv_gib = kv_tokens * KV_BYTES_PER_TOKEN / GIB
        log.engine("gpu_worker.py:298", f"Available KV cache memory: {kv_gib:.2f} GiB")
        if cfg.legacy_metrics:
            # V0's executor logged the block count instead of the token capacity.
            log.engine("executor_base.py:113", f"# GPU blocks: {blocks}, # CPU blocks: 2048")
        else:
            log.engine("kv_cache_utils.py:1087", f"GPU KV cache size: {kv_tokens:,} tokens")
        log.engine(
            "kv_cache_utils.py:1091",
            f"Maximum concurrency for {cfg.max_model_len:,} tokens per request: "
            f"{kv_tokens / cfg.max_model_len:.2f}x",
        )

        graphs_started = time.monotonic()
        graphs = 67
        desc = "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)"
        log.raw(f"{desc}:   0%|{_bar(0)}| 0/{graphs} [00:00<?, ?it/s]")
        await self._stall_if_unready()
        for done in (graphs // 2, graphs):
            await asyncio.sleep(total * 0.15 / 2)
            elapsed = time.monotonic() - graphs_started
            remaining = elapsed / done * (graphs - done)
            log.raw(
                f"{desc}: {done * 100 // graphs:3d}%|{_bar(done / graphs)}| {done}/{graphs} "
                f"[{_clock(elapsed)}<{_clock(remaining)}, {_rate(done, elapsed)}]"
            )
        graphs_took = time.monotonic() - graphs_started
        log.engine(
            "gpu_model_runner.py:3480",
            f"Graph capturing finished in {round(graphs_took)} secs, took 0.49 GiB",
        )
        log.engine(
            "core.py:210",
            f"init engine (profile, create kv cache, warmup model) took {time.monotonic() - profile_started:.2f} seconds",
        )
        log.api(
            "loggers.py:147",
            f"Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: {blocks}",
        )
        log.api("api_server.py:1634", "Supported_tasks: ['generate']")
        if cfg.legacy_metrics:
            log.api("api_server.py:1024", f"Starting vLLM API server on {self.url}")
        else:
            log.api("api_server.py:1912", f"Starting vLLM API server 0 on {self.url}")
        log.api("launcher.py:34", "Available routes are:")
        for path, methods in (
            ("/health", "GET"),
            ("/metrics", "GET"),
            ("/v1/models", "GET"),
            ("/version", "GET"),
            ("/v1/chat/completions", "POST"),
            ("/v1/completions", "POST"),
        ):
            log.api("launcher.py:42", f"Route: {path}, Methods: {methods}")
        log.uvicorn(f"Started server process [{log.pid}]")
        log.uvicorn("Waiting for application startup.")
        log.uvicorn("Application startup complete.")
        # Flip only after the line is written: whoever sees /health 200 finds the line in the log.
        self.loaded = True
        assert self._loaded_event is not None
        self._loaded_event.set()
        self._tasks.append(asyncio.create_task(self._log_stats(), name="vllm-emulator-stats"))

    async def _download(self, shard_gib: float, seconds: float) -> None:
        """huggingface_hub's snapshot_download bars: one per file, and the "Fetching N files" total.

        The total bar is what workers/status.py reads download progress from; the per-file bars
        move in between, as they do when files download one after another.
        """
        cfg = self.config
        files = cfg.num_shards
        fetching = f"Fetching {files} files"
        per_shard = seconds / files
        download_started = time.monotonic()
        if cfg.download_progress:
            self.log.raw(f"{fetching}:   0%|{_bar(0)}| 0/{files} [00:00<?, ?it/s]")
        for shard in range(1, files + 1):
            name = f"model-{shard:05d}-of-{files:05d}.safetensors"
            started = time.monotonic()
            for quarter in range(1, 5):
                await asyncio.sleep(per_shard / 4)
                if not cfg.download_progress:
                    continue
                fraction = quarter / 4
                elapsed = time.monotonic() - started
                rate_mb = shard_gib * fraction * 1024 / max(elapsed, 1e-3)
                self.log.raw(
                    f"{name}: {int(fraction * 100):3d}%|{_bar(fraction)}| "
                    f"{shard_gib * fraction:.2f}G/{shard_gib:.2f}G "
                    f"[{_clock(elapsed)}<{_clock(elapsed / fraction - elapsed)}, {rate_mb:.0f}MB/s]"
                )
            if cfg.download_progress:
                elapsed = time.monotonic() - download_started
                remaining = elapsed / shard * (files - shard)
                self.log.raw(
                    f"{fetching}: {shard * 100 // files:3d}%|{_bar(shard / files)}| {shard}/{files} "
                    f"[{_clock(elapsed)}<{_clock(remaining)}, {_rate(shard, elapsed)}]"
                )

    def _log_hub_401(self) -> None:
        repo = self.config.hub_repo
        url = f"https://huggingface.co/{repo}/resolve/main/config.json"
        request_id = f"Root=1-{int(time.time()):x}-{secrets.token_hex(12)};{uuid.uuid4()}"
        lines = [
            "Traceback (most recent call last):",
            f'  File "{SITE_PACKAGES}/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status',
            "    response.raise_for_status()",
            f'  File "{SITE_PACKAGES}/requests/models.py", line 1024, in raise_for_status',
            "    raise HTTPError(http_error_msg, response=self)",
            f"requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: {url}",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "Traceback (most recent call last):",
            '  File "/usr/local/bin/vllm", line 10, in <module>',
            "    sys.exit(main())",
            f'  File "{SITE_PACKAGES}/vllm/transformers_utils/config.py", line 383, in get_config',
            "    config_dict, _ = PretrainedConfig.get_config_dict(",
            f'  File "{SITE_PACKAGES}/huggingface_hub/file_download.py", line 1484, in _get_metadata_or_catch_error',
            "    metadata = get_hf_file_metadata(",
            f'  File "{SITE_PACKAGES}/huggingface_hub/utils/_http.py", line 426, in hf_raise_for_status',
            "    raise _format(GatedRepoError, message, response) from e",
            f"huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: {request_id})",
            "",
            f"Cannot access gated repo for url {url}.",
            f"Access to model {repo} is restricted. You must have access to it and be authenticated "
            "to access it. Please log in.",
        ]
        for line in lines:
            self.log.raw(line, "APIServer")

    def _log_oom(self, shard_gib: float) -> None:
        want = min(shard_gib, 1.96)
        free = 1.02
        oom = (
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {want:.2f} GiB. GPU 0 has a "
            f"total capacity of {GPU_TOTAL_GIB:.2f} GiB of which {free:.2f} GiB is free. Including "
            f"non-PyTorch memory, this process has {GPU_TOTAL_GIB - free:.2f} GiB memory in use. Of the "
            f"allocated memory {GPU_TOTAL_GIB - free - 0.66:.2f} GiB is allocated by PyTorch, and 148.00 MiB "
            "is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try "
            "setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
            "documentation for Memory Management  "
            "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
        )
        trace = [
            "EngineCore failed to start.",
            "Traceback (most recent call last):",
            f'  File "{SITE_PACKAGES}/vllm/v1/engine/core.py", line 699, in run_engine_core',
            "    engine_core = EngineCoreProc(*args, **kwargs)",
            f'  File "{SITE_PACKAGES}/vllm/v1/worker/gpu_model_runner.py", line 2635, in load_model',
            "    self.model = model_loader.load_model(",
            f'  File "{SITE_PACKAGES}/vllm/model_executor/model_loader/default_loader.py", line 264, in load_weights',
            "    loaded_weights = model.load_weights(self.get_all_weights(model_config, model))",
            f'  File "{SITE_PACKAGES}/vllm/model_executor/model_loader/weight_utils.py", line 480, '
            "in safetensors_weights_iterator",
            "    param = f.get_tensor(name)",
            oom,
        ]
        for line in trace:
            self.log.engine("core.py:708", line, level="ERROR")
        self.log.raw("Process EngineCore_DP0:", "EngineCore_DP0")
        for line in (
            "Traceback (most recent call last):",
            '  File "/usr/local/bin/vllm", line 10, in <module>',
            "    sys.exit(main())",
            f'  File "{SITE_PACKAGES}/vllm/v1/engine/utils.py", line 854, in wait_for_engine_startup',
            "    raise RuntimeError(",
            "RuntimeError: Engine core initialization failed. See root cause above. "
            "Failed core proc(s): {'EngineCore_DP0': 1}",
        ):
            self.log.raw(line, "APIServer")

    async def _log_stats(self) -> None:
        """vLLM's periodic throughput line; like vLLM, silent while idle."""
        engine = self.engine
        last = time.monotonic()
        previous_busy = False
        while True:
            await asyncio.sleep(self.config.stats_interval)
            now = time.monotonic()
            span = max(now - last, 1e-9)
            prompt_tps = engine.interval_prompt_tokens / span
            gen_tps = engine.interval_generation_tokens / span
            engine.interval_prompt_tokens = engine.interval_generation_tokens = 0
            last = now
            busy = bool(prompt_tps or gen_tps or engine.running or engine.waiting)
            if not (busy or previous_busy):
                continue
            previous_busy = busy
            usage = engine.kv_cache_usage() * 100
            if self.config.legacy_metrics:
                self.log.api(
                    "metrics.py:455",
                    f"Avg prompt throughput: {prompt_tps:.1f} tokens/s, Avg generation throughput: "
                    f"{gen_tps:.1f} tokens/s, Running: {engine.running} reqs, Swapped: 0 reqs, "
                    f"Pending: {engine.waiting} reqs, GPU KV cache usage: {usage:.1f}%, "
                    "CPU KV cache usage: 0.0%.",
                )
            else:
                self.log.api(
                    "loggers.py:123",
                    f"Engine 000: Avg prompt throughput: {prompt_tps:.1f} tokens/s, Avg generation "
                    f"throughput: {gen_tps:.1f} tokens/s, Running: {engine.running} reqs, Waiting: "
                    f"{engine.waiting} reqs, GPU KV cache usage: {usage:.1f}%, Prefix cache hit rate: 0.0%",
                )

    # -- middlewares ------------------------------------------------------------------------------

    @web.middleware
    async def _access_log_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if self.config.access_log:
                peer = request.transport.get_extra_info("peername") if request.transport else None
                client = f"{peer[0]}:{peer[1]}" if peer else "-"
                reason = web.Response(status=status).reason
                self.log.uvicorn(
                    f'{client} - "{request.method} {request.path_qs} HTTP/{request.version.major}.'
                    f'{request.version.minor}" {status} {reason}'
                )

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        key = self.config.api_key
        if key and request.method != "OPTIONS" and request.path.startswith(GUARDED_PREFIXES):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            # Compare digests, as vLLM does, so the comparison time says nothing about the key.
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                hashlib.sha256(token.encode()).digest(), hashlib.sha256(key.encode()).digest()
            ):
                # vLLM answers exactly this body, not an OpenAI error object.
                return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    # -- helpers ----------------------------------------------------------------------------------

    def _error(self, status: int, message: str, err_type: str, param: str | None = None) -> web.Response:
        if self.config.legacy_metrics:
            body: dict[str, Any] = {
                "object": "error",
                "message": message,
                "type": err_type,
                "param": param,
                "code": status,
            }
        else:
            body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
        return web.json_response(body, status=status)

    def _ready(self) -> bool:
        return self.loaded and self.fail_mode != "unready"

    def _not_ready(self) -> web.Response:
        response = self._error(
            503, "The model is still loading; try again shortly.", "ServiceUnavailableError"
        )
        response.headers["Retry-After"] = "5"
        return response

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        # vLLM lets the model be left out and then serves the one it has.
        if model is not None and model != self.config.served_model_name:
            raise RequestError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    def _plan(self, body: dict[str, Any], prompt_tokens: int, max_tokens_field: str) -> GenerationRequest:
        if body.get("n", 1) != 1:
            raise RequestError(400, "n > 1 is not supported by the emulator", param="n")
        max_tokens = body.get(max_tokens_field, body.get("max_tokens"))
        limit = self.config.max_model_len
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise RequestError(400, f"{max_tokens_field} must be an integer >= 1", param=max_tokens_field)
            if prompt_tokens + max_tokens > limit:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
                    "the completion). Please reduce the length of the messages or completion.",
                )
            return GenerationRequest(
                prompt_tokens=prompt_tokens, max_tokens=max_tokens, finish_reason="length"
            )
        if prompt_tokens >= limit:
            raise RequestError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
            )
        # Without max_tokens the text ends on its own: a few dozen tokens and a "stop".
        wanted = min(self.engine.default_max_tokens(), limit - prompt_tokens)
        return GenerationRequest(prompt_tokens=prompt_tokens, max_tokens=wanted, finish_reason="stop")

    @staticmethod
    def _usage(req: GenerationRequest, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": req.prompt_tokens,
            "total_tokens": req.prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
        }

    # -- handlers ---------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self._ready() else 503)

    async def _load(self, request: web.Request) -> web.Response:
        return web.json_response({"server_load": self.engine.running + self.engine.waiting})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.engine.metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _models(self, request: web.Request) -> web.Response:
        if not self._ready():
            return self._not_ready()
        created = int(time.time())
        card = {
            "id": self.config.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.config.model,
            "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_generation(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_generation(request, chat=False)

    async def _serve_generation(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        if not self._ready():
            return self._not_ready()
        try:
            body = await self._json_body(request)
            self._check_model(body)
            if chat:
                req = self._plan(body, chat_prompt_tokens(body), "max_completion_tokens")
            else:
                req = self._plan(body, completion_prompt_tokens(body), "max_tokens")
        except RequestError as err:
            return self._error(err.status, err.message, err.err_type, err.param)
        if self.fail_mode == "500":
            self.log.engine("core.py:718", "EngineCore encountered a fatal error.", level="ERROR")
            return self._error(
                500,
                "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                "InternalServerError",
            )
        stream_options = body.get("stream_options") or {}
        include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
        response_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.get("stream"):
            return await self._stream(request, req, response_id, chat=chat, include_usage=include_usage)
        tokens = []
        async with contextlib.aclosing(self.engine.generate(req)) as gen:
            async for token in gen:
                tokens.append(token)
        text = "".join(tokens)
        base = {"id": response_id, "created": int(time.time()), "model": self.config.served_model_name}
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning_content": None,
                },
                "logprobs": None,
                "finish_reason": req.finish_reason,
                "stop_reason": None,
            }
            payload = {**base, "object": "chat.completion", "choices": [choice]}
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": req.finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            payload = {**base, "object": "text_completion", "choices": [choice]}
        payload["usage"] = self._usage(req, len(tokens))
        payload["prompt_logprobs"] = None
        payload["kv_transfer_params"] = None
        return web.json_response(payload)

    async def _stream(
        self,
        request: web.Request,
        req: GenerationRequest,
        response_id: str,
        *,
        chat: bool,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = self.config.served_model_name

        async def send(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> None:
            chunk: dict[str, Any] = {"id": response_id, "object": obj, "created": created, "model": model}
            chunk["choices"] = choices
            if usage is not None:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode())

        def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {"content": text}
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}

        emitted = 0
        try:
            async with contextlib.aclosing(self.engine.generate(req)) as gen:
                async for token in gen:
                    if chat and emitted == 0:
                        await send([choice("", None, first=True)])
                    emitted += 1
                    last = emitted == req.max_tokens
                    await send([choice(token, req.finish_reason if last else None)])
            if include_usage:
                await send([], usage=self._usage(req, emitted))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            # The client went away; aclosing() above has already counted the request as aborted.
            pass
        return response

    async def _set_fail_mode(self, request: web.Request) -> web.Response:
        if not _is_loopback(request):
            return web.json_response(
                {"error": "the control endpoint answers loopback callers only"}, status=403
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        mode = body.get("mode") if isinstance(body, dict) else None
        if mode not in RUNTIME_FAIL_MODES:
            return web.json_response(
                {"error": f"mode must be one of {', '.join(RUNTIME_FAIL_MODES)}"},
                status=400,
            )
        self.fail_mode = mode
        if mode != "unready" and self._unstall is not None:
            self._unstall.set()
        return await self._state(request)

    async def _state(self, request: web.Request) -> web.Response:
        if not _is_loopback(request):
            return web.json_response(
                {"error": "the control endpoint answers loopback callers only"}, status=403
            )
        engine = self.engine
        return web.json_response(
            {
                "served_model_name": self.config.served_model_name,
                "loaded": self.loaded,
                "ready": self._ready(),
                "fail_mode": self.fail_mode,
                "running": engine.running,
                "waiting": engine.waiting,
                "kv_cache_usage": engine.kv_cache_usage(),
                "num_gpu_blocks": self.config.gpu_blocks,
            }
        )


class _FatalLoad(Exception):
    def __init__(self, exit_code: int) -> None:
        super().__init__(f"load failed; exit {exit_code}")
        self.exit_code = exit_code


def _is_loopback(request: web.Request) -> bool:
    remote = request.remote or ""
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# running it


class EmulatorThread:
    """An Emulator on its own event loop in a daemon thread, for synchronous callers.

    with start_in_thread(EmulatorConfig(port=0, load_seconds=0.2)) as emu:
        httpx.get(emu.url + "/health")
    """

    def __init__(self, config: EmulatorConfig, stream: TextIO | None = None) -> None:
        self.emulator = Emulator(config, stream)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-emulator", daemon=True)

    @property
    def url(self) -> str:
        return self.emulator.url

    def start(self) -> EmulatorThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.emulator.start(), self._loop).result(timeout=30)
        return self

    def wait_loaded(self, timeout: float) -> None:
        asyncio.run_coroutine_threadsafe(self.emulator.wait_loaded(), self._loop).result(timeout=timeout)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.emulator.stop(), self._loop).result(
            timeout=self.emulator.config.shutdown_timeout + 10
        )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> EmulatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(config: EmulatorConfig, stream: TextIO | None = None) -> EmulatorThread:
    """Start an emulator in a background thread; returns once its port is bound."""
    return EmulatorThread(config, stream).start()


async def serve(config: EmulatorConfig, stream: TextIO | None = None) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until the load fails like a real pod would (exit 1)."""
    emulator = Emulator(config, stream)
    await emulator.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_wait = asyncio.create_task(stop.wait())
    fatal_wait = asyncio.create_task(emulator.wait_fatal())
    done, pending = await asyncio.wait({stop_wait, fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    code = fatal_wait.result() if fatal_wait in done else 0
    await emulator.stop()
    return code


def build_parser() -> argparse.ArgumentParser:
    d = EmulatorConfig()
    p = argparse.ArgumentParser(
        description="Emulate a vLLM OpenAI-compatible server on a loopback port.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default=d.host, help="loopback address to bind")
    p.add_argument("--port", type=int, default=d.port, help="port to bind; 0 picks a free one")
    p.add_argument("--served-model-name", default=d.served_model_name, help="the model name clients send")
    p.add_argument("--model", default="", help="the weights' source, e.g. meta-llama/Llama-3.1-8B-Instruct")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None, help="required Bearer key (default: $VLLM_API_KEY)")
    keys.add_argument("--api-key-file", type=Path, default=None, help="read the key from this file")
    p.add_argument("--load-seconds", type=float, default=d.load_seconds, help="how long the model load takes")
    p.add_argument("--weights-cached", action="store_true", help="skip the weight download phase")
    p.add_argument(
        "--no-download-progress",
        dest="download_progress",
        action="store_false",
        help="do not print HuggingFace download bars (real vLLM does not)",
    )
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="requests that run at once")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument(
        "--num-gpu-blocks", type=int, default=None, help="KV cache blocks (default: sized for max seqs)"
    )
    p.add_argument("--weights-gib", type=float, default=d.weights_gib, help="size of the weights in GiB")
    p.add_argument("--num-shards", type=int, default=d.num_shards, help="safetensors shards")
    p.add_argument("--ttft-ms-mean", type=float, default=d.ttft_ms_mean)
    p.add_argument("--ttft-ms-p95", type=float, default=d.ttft_ms_p95)
    p.add_argument("--tpot-ms-mean", type=float, default=d.tpot_ms_mean)
    p.add_argument("--tpot-ms-p95", type=float, default=d.tpot_ms_p95)
    p.add_argument("--fail-mode", choices=FAIL_MODES, default=d.fail_mode)
    p.add_argument("--legacy-metrics", action="store_true", help="emulate vLLM < 0.10 (V0) names and logs")
    p.add_argument("--seed", type=int, default=None, help="seed the latency sampler")
    p.add_argument(
        "--stats-interval", type=float, default=d.stats_interval, help="seconds between stats lines"
    )
    p.add_argument(
        "--disable-uvicorn-access-log",
        dest="access_log",
        action="store_false",
        help="do not log one line per HTTP request",
    )
    p.add_argument("--shutdown-timeout", type=float, default=d.shutdown_timeout, help="drain time on SIGTERM")
    p.add_argument("--log-file", type=Path, default=None, help="append the log here (default: stdout)")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    if args.api_key_file is not None:
        api_key: str | None = args.api_key_file.read_text().strip()
        if not api_key:
            raise ValueError(f"--api-key-file {args.api_key_file} is empty")
    else:
        api_key = args.api_key or os.environ.get("VLLM_API_KEY") or None
    fields = {f.name for f in dataclasses.fields(EmulatorConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["api_key"] = api_key
    return EmulatorConfig(**values)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if args.log_file is None:
        return asyncio.run(serve(config, sys.stdout))
    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    with args.log_file.open("a", encoding="utf-8") as stream:
        return asyncio.run(serve(config, stream))


if __name__ == "__main__":
    sys.exit(main())
