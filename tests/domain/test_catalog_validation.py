"""Every input is validated before it reaches the database or a manifest."""

from __future__ import annotations

from decimal import Decimal

import pytest

from endpoints import actions
from endpoints.exceptions import ValidationFailed
from tests.factories import REVISION, make_model, make_template, make_tier

pytestmark = pytest.mark.django_db


def fields_of(excinfo) -> dict:
    return excinfo.value.fields


def test_it_rejects_a_branch_name_as_the_revision_of_a_hugging_face_model() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_model(revision="main")
    assert "not the moving name 'main'" in fields_of(caught)["revision"][0]


def test_it_rejects_a_short_or_uppercase_commit_for_hugging_face() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_model(revision="0E9E39F")
    assert "40-character" in fields_of(caught)["revision"][0]


def test_s3_and_pvc_sources_take_an_object_version_but_not_latest() -> None:
    assert make_model(source="s3://models-bucket/llama/8b", revision="v3.2024-11").pk
    assert make_model(source="pvc://weights/llama-8b", revision="snapshot-7").pk
    with pytest.raises(ValidationFailed) as caught:
        make_model(source="s3://models-bucket/llama/8b", revision="latest")
    assert "revision" in fields_of(caught)


@pytest.mark.parametrize(
    "source", ["http://example.com/model", "hf://just-a-name", "s3://B/x", "pvc://Bad_Claim"]
)
def test_it_rejects_a_source_it_cannot_pin(source: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_model(source=source, revision=REVISION)
    assert "source" in fields_of(caught)


def test_numbers_have_bounds_that_the_message_states() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_model(num_layers=0)
    assert fields_of(caught)["num_layers"] == ["must be between 1 and 512"]


def test_runtime_images_are_pinned_by_tag_or_digest_never_latest() -> None:
    digest = "sha256:" + "a" * 64
    assert actions.create_runtime_image(None, repository="vllm/vllm-openai", digest=digest).reference == (
        f"vllm/vllm-openai@{digest}"
    )
    with pytest.raises(ValidationFailed) as caught:
        actions.create_runtime_image(None, repository="vllm/vllm-openai", tag="latest")
    assert "moving tag 'latest'" in fields_of(caught)["tag"][0]
    with pytest.raises(ValidationFailed) as caught:
        actions.create_runtime_image(None, repository="vllm/vllm-openai")
    assert "tag" in fields_of(caught)
    with pytest.raises(ValidationFailed) as caught:
        actions.create_runtime_image(None, repository="vllm/vllm-openai", tag="v1", digest="sha256:short")
    assert "digest" in fields_of(caught)


def test_tier_labels_taints_and_resource_names_must_be_valid_kubernetes() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_tier(node_labels={"bad key!": "x"})
    assert "node_labels" in fields_of(caught)
    with pytest.raises(ValidationFailed) as caught:
        make_tier(taints=[{"key": "nvidia.com/gpu", "effect": "Sometimes"}])
    assert "effect must be one of" in fields_of(caught)["taints"][0]
    with pytest.raises(ValidationFailed) as caught:
        make_tier(resource_name="gpu")
    assert "resource_name" in fields_of(caught)
    with pytest.raises(ValidationFailed) as caught:
        make_tier(name="H100")
    assert "name" in fields_of(caught)


def test_a_template_may_start_at_zero_replicas_only_when_it_scales_to_zero() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_template(min_replicas=0)
    assert fields_of(caught)["min_replicas"] == ["must be at least 1 unless scale_to_zero is on"]
    assert make_template(min_replicas=0, scale_to_zero=True).pk


def test_it_refuses_a_template_that_cannot_hold_one_sequence_with_the_numbers() -> None:
    tier = make_tier(gpu_memory_gib=Decimal(24))
    with pytest.raises(ValidationFailed) as caught:
        make_template(tier=tier, max_model_len=131_072)
    assert "at most 38492 tokens fit" in fields_of(caught)["max_model_len"][0]
    assert caught.value.details["capacity"]["kv_cache_tokens"] == 38_492


def test_it_refuses_a_template_whose_tensor_parallel_size_differs_from_its_gpus() -> None:
    with pytest.raises(ValidationFailed) as caught:
        make_template(gpus_per_replica=2, tensor_parallel_size=1)
    assert "tensor_parallel_size" in fields_of(caught)


def test_free_text_is_bounded() -> None:
    model = make_model(approved=False)
    with pytest.raises(ValidationFailed) as caught:
        actions.reject_model(None, model, "x" * 1001)
    assert fields_of(caught)["note"] == ["must be at most 1000 characters (got 1001)"]
