"""Capacity fit and cost: pure functions of numbers, no database.

Units: memory is counted in bytes and shown in GiB (2**30 bytes), because GPUs report memory
in MiB (nvidia-smi, the ``nvidia.com/gpu.memory`` node label) and vLLM sizes its KV cache in
bytes. A GPU tier's ``gpu_memory_gib`` is the MiB figure divided by 1024 (an "80GB" H100
reports 81559 MiB = 79.65 GiB). Parameters are counted one by one, so weights of an 8e9
parameter model in bf16 are 16e9 bytes = 14.90 GiB.

The fit follows vLLM's own budget: of each GPU, ``gpu_memory_utilization`` is the share vLLM
may use; from that budget come the weights, a runtime overhead (CUDA context, NCCL buffers,
activation peak and CUDA graphs, which vLLM profiles at start), and what is left is KV cache.

Money is Decimal throughout; a month is 730 hours (365 × 24 / 12).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

GIB = 1024**3
# What vLLM needs per GPU beyond weights and KV cache. Measured figures for 7-8B models are
# 1-2 GiB; we take the top of that range so a template that "fits" also starts.
RUNTIME_OVERHEAD_BYTES_PER_GPU = 2 * GIB
HOURS_PER_MONTH = Decimal(730)
CENT = Decimal("0.01")


def gib(num_bytes: int | Decimal) -> Decimal:
    """Bytes as GiB, rounded to two places for people to read."""
    return (Decimal(num_bytes) / GIB).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class FitProblem:
    """One reason a template does not fit, and the input field to change."""

    field: str
    message: str


@dataclass(frozen=True)
class Fit:
    """Every number behind a capacity verdict, so the verdict can be checked by hand."""

    weights_bytes: int
    kv_bytes_per_token: int
    gpu_memory_bytes: int  # one GPU (or MIG slice)
    gpus: int
    gpu_memory_utilization: Decimal
    budget_bytes: int  # gpu_memory_bytes × gpus × gpu_memory_utilization
    overhead_bytes: int
    kv_cache_bytes: int  # budget − weights − overhead; negative when the weights do not fit
    kv_tokens: int  # tokens of KV cache that fit, over all sequences
    max_model_len: int
    sequences_at_max_len: int  # concurrent sequences that can each hold max_model_len tokens
    problems: tuple[FitProblem, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def reasons(self) -> list[str]:
        return [p.message for p in self.problems]

    def field_errors(self) -> dict[str, list[str]]:
        errors: dict[str, list[str]] = {}
        for problem in self.problems:
            errors.setdefault(problem.field, []).append(problem.message)
        return errors

    def as_dict(self) -> dict:
        """JSON-ready: GiB as strings with two decimals, counts as numbers."""
        return {
            "fits": self.fits,
            "reasons": self.reasons,
            "weights_gib": str(gib(self.weights_bytes)),
            "kv_cache_bytes_per_token": self.kv_bytes_per_token,
            "gpu_memory_gib": str(gib(self.gpu_memory_bytes)),
            "gpus": self.gpus,
            "gpu_memory_utilization": str(self.gpu_memory_utilization),
            "budget_gib": str(gib(self.budget_bytes)),
            "overhead_gib": str(gib(self.overhead_bytes)),
            "kv_cache_gib": str(gib(self.kv_cache_bytes)),
            "kv_cache_tokens": self.kv_tokens,
            "max_model_len": self.max_model_len,
            "sequences_at_max_model_len": self.sequences_at_max_len,
        }


def weights_bytes(parameters: int, bytes_per_parameter: Decimal) -> int:
    return int((Decimal(parameters) * bytes_per_parameter).to_integral_value(rounding=ROUND_CEILING))


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, kv_dtype_bytes: int) -> int:
    """Key and value (the 2) for every layer and KV head: 2 × layers × KV heads × head dim × bytes."""
    return 2 * num_layers * num_kv_heads * head_dim * kv_dtype_bytes


def fit(
    *,
    parameters: int,
    bytes_per_parameter: Decimal,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    max_context: int,
    kv_dtype_bytes: int,
    gpu_memory_gib: Decimal,
    gpus_per_node: int,
    gpus_per_replica: int,
    tensor_parallel_size: int,
    gpu_memory_utilization: Decimal,
    max_model_len: int,
    mig: bool = False,
    overhead_bytes_per_gpu: int = RUNTIME_OVERHEAD_BYTES_PER_GPU,
) -> Fit:
    """Whether one replica holds the weights and at least one sequence of max_model_len tokens."""
    gpus = gpus_per_replica
    utilization = Decimal(gpu_memory_utilization)
    per_gpu = int((Decimal(gpu_memory_gib) * GIB).to_integral_value(rounding=ROUND_FLOOR))
    budget = int((Decimal(per_gpu) * gpus * utilization).to_integral_value(rounding=ROUND_FLOOR))
    weights = weights_bytes(parameters, bytes_per_parameter)
    overhead = overhead_bytes_per_gpu * gpus
    kv_cache = budget - weights - overhead
    per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, kv_dtype_bytes)
    tokens = max(0, kv_cache) // per_token if per_token else 0
    sequences = tokens // max_model_len if max_model_len > 0 else 0

    problems: list[FitProblem] = []
    if tensor_parallel_size != gpus_per_replica:
        problems.append(
            FitProblem(
                "tensor_parallel_size",
                f"must equal gpus_per_replica ({gpus_per_replica}): vLLM shards the model over exactly "
                f"tensor_parallel_size GPUs and the pod hangs at start when the pod has a different number "
                f"(got {tensor_parallel_size})",
            )
        )
    if gpus_per_replica > gpus_per_node:
        problems.append(
            FitProblem(
                "gpus_per_replica",
                f"must be at most {gpus_per_node}, the GPUs on one node of this tier "
                f"(a replica cannot span nodes; got {gpus_per_replica})",
            )
        )
    if mig and gpus_per_replica != 1:
        problems.append(
            FitProblem(
                "gpus_per_replica",
                f"must be 1 on a MIG tier: tensor parallelism does not run across MIG slices (got {gpus_per_replica})",
            )
        )
    if max_model_len > max_context:
        problems.append(
            FitProblem(
                "max_model_len",
                f"must be at most {max_context}, the model's max context (got {max_model_len})",
            )
        )
    usable = (
        f"{gib(budget)} GiB usable ({gib(per_gpu)} GiB × {gpus} GPU{'s' if gpus != 1 else ''} "
        f"× {utilization})"
    )
    if kv_cache <= 0:
        problems.append(
            FitProblem(
                "gpus_per_replica",
                f"too few GPUs: weights {gib(weights)} GiB + runtime overhead {gib(overhead)} GiB "
                f"need more than the {usable}; use more GPUs per replica, a quantised model or a larger tier",
            )
        )
    elif sequences < 1:
        problems.append(
            FitProblem(
                "max_model_len",
                f"too long for this GPU memory: one sequence of {max_model_len} tokens needs "
                f"{gib(per_token * max_model_len)} GiB of KV cache ({per_token} bytes per token), but only "
                f"{gib(kv_cache)} GiB is left of {usable} after weights {gib(weights)} GiB and overhead "
                f"{gib(overhead)} GiB; at most {tokens} tokens fit",
            )
        )
    return Fit(
        weights_bytes=weights,
        kv_bytes_per_token=per_token,
        gpu_memory_bytes=per_gpu,
        gpus=gpus,
        gpu_memory_utilization=utilization,
        budget_bytes=budget,
        overhead_bytes=overhead,
        kv_cache_bytes=kv_cache,
        kv_tokens=tokens,
        max_model_len=max_model_len,
        sequences_at_max_len=sequences,
        problems=tuple(problems),
    )


# Cost ---------------------------------------------------------------------------------------


def hourly_rate(price_per_gpu_hour: Decimal, gpus_per_replica: int, replicas: int) -> Decimal:
    """What an endpoint costs per hour: price per GPU-hour × GPUs per replica × replicas."""
    return Decimal(price_per_gpu_hour) * gpus_per_replica * replicas


@dataclass(frozen=True)
class CostForecast:
    """Hourly rate and a 730-hour month at both ends of an endpoint's replica range."""

    hourly_at_min: Decimal
    hourly_at_max: Decimal
    monthly_at_min: Decimal
    monthly_at_max: Decimal

    def as_dict(self) -> dict:
        return {
            "hourly_at_min_replicas": str(self.hourly_at_min.quantize(CENT, rounding=ROUND_HALF_UP)),
            "hourly_at_max_replicas": str(self.hourly_at_max.quantize(CENT, rounding=ROUND_HALF_UP)),
            "monthly_at_min_replicas": str(self.monthly_at_min.quantize(CENT, rounding=ROUND_HALF_UP)),
            "monthly_at_max_replicas": str(self.monthly_at_max.quantize(CENT, rounding=ROUND_HALF_UP)),
            "hours_per_month": int(HOURS_PER_MONTH),
        }


def forecast(
    price_per_gpu_hour: Decimal, gpus_per_replica: int, min_replicas: int, max_replicas: int
) -> CostForecast:
    low = hourly_rate(price_per_gpu_hour, gpus_per_replica, min_replicas)
    high = hourly_rate(price_per_gpu_hour, gpus_per_replica, max_replicas)
    return CostForecast(low, high, low * HOURS_PER_MONTH, high * HOURS_PER_MONTH)


@dataclass(frozen=True)
class UsageInterval:
    """A stretch of time during which an endpoint ran a constant number of replicas."""

    started_at: datetime
    ended_at: datetime | None
    replicas: int
    gpus_per_replica: int
    price_per_gpu_hour: Decimal


def accrued_cost(intervals: Iterable[UsageInterval], now: datetime) -> Decimal:
    """The cost of INTERVALS up to NOW (open intervals run until NOW), exact, not rounded."""
    total = Decimal(0)
    for interval in intervals:
        end = min(interval.ended_at or now, now)
        if end <= interval.started_at:
            continue
        delta = end - interval.started_at
        seconds = Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000
        hours = seconds / 3600
        total += (
            hourly_rate(interval.price_per_gpu_hour, interval.gpus_per_replica, interval.replicas) * hours
        )
    return total


def money(amount: Decimal) -> str:
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))
