#!/usr/bin/env python3
"""Drive an OpenAI-compatible endpoint at a given rate and concurrency, then print a summary.

    python bench/loadgen.py http://127.0.0.1:8001 --api-key "$KEY" --rate 5 --concurrency 8 \
        --duration 30 --stream

It stops by itself: after --duration seconds or --requests requests, whichever comes first (10 s
when neither is given), then waits for the requests still in flight. With --rate 0 it runs closed
loop: --concurrency workers send back to back. TTFT is measured client-side from sending the
request to the first streamed content, so it is only reported with --stream.

By default it refuses targets that do not resolve to loopback addresses; --allow-remote lifts that.
To reach an endpoint behind the local gateway by its hostname, target the gateway's loopback
address and pass the endpoint's hostname with --host-header.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import math
import os
import random
import socket
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx

DEFAULT_PROMPT = "Write a short paragraph about how a continuous batching scheduler keeps a GPU busy."


@dataclasses.dataclass
class Result:
    ok: bool
    status: str  # the HTTP status, or the exception's name when there was none
    e2e: float
    ttft: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, like numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def base_url(url: str) -> str:
    """Accept http://host:port, http://host:port/ or http://host:port/v1; return it without /v1."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def non_loopback_addresses(url: str) -> list[str]:
    """The addresses the URL's host resolves to that are not loopback (empty: safe to drive)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    host = parts.hostname
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    return sorted({str(a) for a in addresses if not a.is_loopback})


class LoadGenerator:
    def __init__(self, args: argparse.Namespace, client: httpx.AsyncClient) -> None:
        self.args = args
        self.client = client
        self.results: list[Result] = []
        self.path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"

    def payload(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "max_tokens": self.args.max_tokens, "temperature": 0}
        if self.args.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self.args.prompt}]
        else:
            body["prompt"] = self.args.prompt
        if self.args.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def one(self, model: str) -> None:
        started = time.perf_counter()
        try:
            if self.args.stream:
                result = await self._streamed(model, started)
            else:
                response = await self.client.post(self.path, json=self.payload(model))
                result = Result(ok=response.is_success, status=str(response.status_code), e2e=0.0)
                if response.is_success:
                    usage = response.json().get("usage") or {}
                    result.prompt_tokens = usage.get("prompt_tokens", 0)
                    result.completion_tokens = usage.get("completion_tokens", 0)
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            result = Result(ok=False, status=type(exc).__name__, e2e=0.0)
        result.e2e = time.perf_counter() - started
        self.results.append(result)

    async def _streamed(self, model: str, started: float) -> Result:
        result = Result(ok=False, status="", e2e=0.0)
        chunks = 0
        done = False
        async with self.client.stream("POST", self.path, json=self.payload(model)) as response:
            result.status = str(response.status_code)
            if not response.is_success:
                await response.aread()
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                    result.completion_tokens = chunk["usage"].get("completion_tokens", 0)
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                    if text:
                        chunks += 1
                        if result.ttft is None:
                            result.ttft = time.perf_counter() - started
        # A stream cut short before [DONE] is a failure even though it started with a 200.
        result.ok = done
        if not done:
            result.status = "incomplete-stream"
        if not result.completion_tokens:
            result.completion_tokens = chunks
        return result

    async def run(self, model: str) -> float:
        args = self.args
        limit = asyncio.Semaphore(args.concurrency)
        deadline = time.perf_counter() + args.duration if args.duration else math.inf
        budget = args.requests if args.requests else math.inf
        sent = 0
        in_flight: set[asyncio.Task[None]] = set()
        rng = random.Random(args.seed)
        started = time.perf_counter()

        async def guarded() -> None:
            try:
                await self.one(model)
            finally:
                limit.release()

        next_at = started
        while sent < budget and time.perf_counter() < deadline:
            if args.rate > 0:
                # Open loop: arrivals follow the schedule, not the responses.
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(min(delay, max(0.0, deadline - time.perf_counter())))
                    if time.perf_counter() >= deadline:
                        break
                gap = rng.expovariate(args.rate) if args.poisson else 1 / args.rate
                next_at += gap
            await limit.acquire()
            if time.perf_counter() >= deadline:
                limit.release()
                break
            task = asyncio.create_task(guarded())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        if in_flight:
            await asyncio.wait(in_flight)
        return time.perf_counter() - started


def summarize(args: argparse.Namespace, target: str, model: str, results: list[Result], wall: float) -> str:
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    lines = [
        f"target: {target} model={model} stream={args.stream} concurrency={args.concurrency} rate={args.rate}"
    ]
    rate = len(results) / wall if wall > 0 else 0.0
    lines.append(f"requests: {len(ok)} ok, {len(failed)} failed in {wall:.2f} s ({rate:.2f} req/s)")
    if failed:
        kinds = Counter(r.status for r in failed)
        lines.append("failures: " + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()))
    ttfts = [r.ttft * 1000 for r in ok if r.ttft is not None]
    if ttfts:
        lines.append(
            f"TTFT ms (client-side): p50 {percentile(ttfts, 0.5):.1f}  p95 {percentile(ttfts, 0.95):.1f}  n={len(ttfts)}"
        )
    else:
        lines.append("TTFT ms (client-side): n/a (use --stream)")
    e2e = [r.e2e * 1000 for r in ok]
    if e2e:
        lines.append(f"latency ms: p50 {percentile(e2e, 0.5):.1f}  p95 {percentile(e2e, 0.95):.1f}")
    prompt = sum(r.prompt_tokens for r in ok)
    completion = sum(r.completion_tokens for r in ok)
    per_s = (lambda n: n / wall) if wall > 0 else (lambda n: 0.0)
    lines.append(
        f"tokens: prompt {prompt} ({per_s(prompt):.1f}/s), completion {completion} ({per_s(completion):.1f}/s)"
    )
    return "\n".join(lines)


async def discover_model(client: httpx.AsyncClient) -> str:
    response = await client.get("/v1/models")
    response.raise_for_status()
    data = response.json().get("data") or []
    if not data:
        raise RuntimeError("the endpoint lists no model; pass --model")
    return data[0]["id"]


async def main_async(args: argparse.Namespace) -> int:
    target = base_url(args.url)
    headers = {}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    if args.host_header:
        headers["Host"] = args.host_header
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(
        base_url=target, headers=headers, timeout=args.timeout, limits=limits, trust_env=False
    ) as client:
        try:
            model = args.model or await discover_model(client)
        except (httpx.HTTPError, RuntimeError, ValueError) as exc:
            print(f"loadgen: cannot list models at {target}/v1/models: {exc}", file=sys.stderr)
            return 1
        generator = LoadGenerator(args, client)
        wall = await generator.run(model)
    print(summarize(args, target + generator.path, model, generator.results, wall))
    if args.json:
        ok = [r for r in generator.results if r.ok]
        ttfts = [r.ttft for r in ok if r.ttft is not None]
        print(
            json.dumps(
                {
                    "ok": len(ok),
                    "failed": len(generator.results) - len(ok),
                    "wall_seconds": wall,
                    "ttft_p50_seconds": percentile(ttfts, 0.5) if ttfts else None,
                    "ttft_p95_seconds": percentile(ttfts, 0.95) if ttfts else None,
                    "completion_tokens": sum(r.completion_tokens for r in ok),
                    "prompt_tokens": sum(r.prompt_tokens for r in ok),
                }
            )
        )
    return 0 if any(r.ok for r in generator.results) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("url", help="the endpoint's base URL, e.g. http://127.0.0.1:8001 (a trailing /v1 is fine)")
    p.add_argument(
        "--api-key", default=os.environ.get("VLLM_API_KEY"), help="Bearer key (default: $VLLM_API_KEY)"
    )
    p.add_argument(
        "--model", default=None, help="model name to send (default: the first one /v1/models lists)"
    )
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--rate", type=float, default=0.0, help="requests per second; 0 = closed loop")
    p.add_argument(
        "--poisson", action="store_true", help="exponential gaps between arrivals instead of even ones"
    )
    p.add_argument("--concurrency", type=int, default=4, help="most requests in flight at once")
    p.add_argument("--duration", type=float, default=None, help="stop sending after this many seconds")
    p.add_argument("--requests", type=int, default=None, help="stop after sending this many requests")
    p.add_argument("--stream", action="store_true", help="stream responses (needed for TTFT)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--host-header", default=None, help="send this Host header (gateway routing by hostname)")
    p.add_argument("--seed", type=int, default=None, help="seed for --poisson arrivals")
    p.add_argument("--json", action="store_true", help="also print a one-line JSON summary")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not a loopback address"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be >= 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be > 0")
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    if not args.allow_remote:
        try:
            remote = non_loopback_addresses(args.url)
        except ValueError as exc:
            parser.error(str(exc))
        if remote:
            parser.error(
                f"refusing to drive {args.url}: it resolves to non-loopback {', '.join(remote)}; "
                "pass --allow-remote to do it anyway"
            )
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
