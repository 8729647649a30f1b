"""Fit and cost against numbers worked by hand. GiB = 2**30 bytes; parameters counted one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from endpoints import capacity
from endpoints.capacity import GIB, UsageInterval

LLAMA_8B = dict(parameters=8_000_000_000, num_layers=32, num_kv_heads=8, head_dim=128, max_context=131_072)


def fit(**overrides) -> capacity.Fit:
    values = dict(
        **LLAMA_8B,
        bytes_per_parameter=Decimal(2),
        kv_dtype_bytes=2,
        gpu_memory_gib=Decimal(80),
        gpus_per_node=8,
        gpus_per_replica=1,
        tensor_parallel_size=1,
        gpu_memory_utilization=Decimal("0.90"),
        max_model_len=8192,
    )
    values.update(overrides)
    return capacity.fit(**values)


def test_an_8b_bf16_model_on_one_80_gib_gpu_at_090_holds_55_sequences_of_8k_tokens() -> None:
    result = fit()
    # weights: 8e9 parameters × 2 bytes = 16,000,000,000 B = 14.90 GiB
    assert result.weights_bytes == 16_000_000_000
    # KV per token: 2 (K and V) × 32 layers × 8 KV heads × 128 head dim × 2 bytes = 131,072 B = 128 KiB
    assert result.kv_bytes_per_token == 131_072
    # budget: 80 GiB × 1 GPU × 0.90 = 72 GiB = 77,309,411,328 B
    assert result.budget_bytes == 77_309_411_328
    # overhead: 2 GiB per GPU
    assert result.overhead_bytes == 2 * GIB
    # KV cache: 77,309,411,328 − 16,000,000,000 − 2,147,483,648 = 59,161,927,680 B (55.10 GiB)
    assert result.kv_cache_bytes == 59_161_927_680
    # tokens: floor(59,161,927,680 / 131,072) = 451,369
    assert result.kv_tokens == 451_369
    # sequences of 8192 tokens: floor(451,369 / 8192) = 55
    assert result.sequences_at_max_len == 55
    assert result.fits
    shown = result.as_dict()
    assert (shown["weights_gib"], shown["budget_gib"], shown["kv_cache_gib"]) == ("14.90", "72.00", "55.10")


def test_it_refuses_a_max_model_len_that_cannot_hold_one_full_sequence_with_the_numbers() -> None:
    # 24 GiB × 0.90 = 23,192,823,398 B; − 16e9 − 2 GiB = 5,045,339,750 B (4.70 GiB) = 38,492 tokens,
    # and one sequence of 131,072 tokens needs 131,072 × 131,072 B = 16 GiB.
    result = fit(gpu_memory_gib=Decimal(24), max_model_len=131_072)
    assert result.kv_tokens == 38_492
    assert result.sequences_at_max_len == 0
    assert not result.fits
    [message] = result.field_errors()["max_model_len"]
    assert "131072 tokens needs 16.00 GiB" in message
    assert "only 4.70 GiB is left" in message
    assert "at most 38492 tokens fit" in message


def test_the_same_gpu_holds_that_context_at_a_shorter_max_model_len() -> None:
    result = fit(gpu_memory_gib=Decimal(24), max_model_len=32_768)
    assert result.fits
    assert result.sequences_at_max_len == 1  # floor(38,492 / 32,768)


def test_it_refuses_a_tensor_parallel_size_that_differs_from_the_gpus_per_replica() -> None:
    result = fit(gpus_per_replica=2, tensor_parallel_size=1)
    assert not result.fits
    assert "must equal gpus_per_replica (2)" in result.field_errors()["tensor_parallel_size"][0]
    assert "hangs" in result.field_errors()["tensor_parallel_size"][0]


def test_weights_that_do_not_fit_are_refused_on_gpus_per_replica() -> None:
    # 70.6e9 × 2 B = 141.2e9 B = 131.50 GiB of weights; one 80 GiB GPU gives 72 GiB.
    result = fit(parameters=70_600_000_000, num_layers=80)
    assert result.kv_cache_bytes < 0
    assert result.kv_tokens == 0
    [message] = result.field_errors()["gpus_per_replica"]
    assert "weights 131.50 GiB" in message and "72.00 GiB usable" in message


def test_two_gpus_double_the_budget_and_the_overhead_for_a_70b_fp8_model() -> None:
    result = fit(
        parameters=70_600_000_000,
        bytes_per_parameter=Decimal(1),
        num_layers=80,
        gpus_per_replica=2,
        tensor_parallel_size=2,
        max_model_len=16_384,
    )
    assert result.weights_bytes == 70_600_000_000
    assert result.budget_bytes == 154_618_822_656  # 2 × 80 GiB × 0.90 = 144 GiB
    assert result.overhead_bytes == 4 * GIB
    assert result.kv_bytes_per_token == 327_680  # 2 × 80 × 8 × 128 × 2
    # 154,618,822,656 − 70,600,000,000 − 4,294,967,296 = 79,723,855,360 B → 243,297 tokens → 14 × 16k
    assert result.kv_cache_bytes == 79_723_855_360
    assert result.kv_tokens == 243_297
    assert result.sequences_at_max_len == 14


def test_four_bit_weights_take_half_a_byte_per_parameter_and_fp8_kv_halves_the_cache_per_token() -> None:
    result = fit(bytes_per_parameter=Decimal("0.5"), kv_dtype_bytes=1)
    assert result.weights_bytes == 4_000_000_000
    assert result.kv_bytes_per_token == 65_536


def test_a_replica_cannot_span_nodes_nor_mig_slices() -> None:
    assert (
        "at most 4"
        in fit(gpus_per_node=4, gpus_per_replica=8, tensor_parallel_size=8).field_errors()[
            "gpus_per_replica"
        ][0]
    )
    mig = fit(
        gpu_memory_gib=Decimal("9.5"), gpus_per_node=7, gpus_per_replica=2, tensor_parallel_size=2, mig=True
    )
    assert any("MIG" in m for m in mig.field_errors()["gpus_per_replica"])


def test_max_model_len_cannot_exceed_the_model_context() -> None:
    result = fit(max_context=32_768, max_model_len=65_536)
    assert "must be at most 32768" in result.field_errors()["max_model_len"][0]


# Cost ---------------------------------------------------------------------------------------


def test_the_hourly_rate_is_price_per_gpu_hour_times_gpus_times_replicas() -> None:
    assert capacity.hourly_rate(Decimal("4.00"), 2, 3) == Decimal("24.00")


def test_the_monthly_forecast_is_730_hours_at_min_and_at_max_replicas() -> None:
    forecast = capacity.forecast(Decimal("1.20"), 1, 1, 4)
    assert forecast.hourly_at_min == Decimal("1.20") and forecast.hourly_at_max == Decimal("4.80")
    assert forecast.monthly_at_min == Decimal("876.00")  # 1.20 × 730
    assert forecast.monthly_at_max == Decimal("3504.00")  # 4.80 × 730
    assert forecast.as_dict()["monthly_at_max_replicas"] == "3504.00"


def test_a_scale_to_zero_endpoint_costs_nothing_at_min_replicas() -> None:
    assert capacity.forecast(Decimal("0.50"), 1, 0, 7).monthly_at_min == 0


def test_accrued_cost_sums_the_usage_intervals_up_to_now() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    intervals = [
        # 2 h × 1 replica × 1 GPU × 4.00 = 8.00
        UsageInterval(now - timedelta(hours=5), now - timedelta(hours=3), 1, 1, Decimal("4.00")),
        # 0.5 h × 3 replicas × 2 GPUs × 4.00 = 12.00
        UsageInterval(now - timedelta(hours=3), now - timedelta(hours=2, minutes=30), 3, 2, Decimal("4.00")),
        # still open: 15 min × 1 × 1 × 1.20 = 0.30
        UsageInterval(now - timedelta(minutes=15), None, 1, 1, Decimal("1.20")),
    ]
    assert capacity.accrued_cost(intervals, now) == Decimal("20.30")


def test_time_after_now_and_empty_intervals_cost_nothing() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    future = UsageInterval(now + timedelta(hours=1), None, 1, 1, Decimal("4.00"))
    backwards = UsageInterval(now, now - timedelta(hours=1), 1, 1, Decimal("4.00"))
    assert capacity.accrued_cost([future, backwards], now) == 0
