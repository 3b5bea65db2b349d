"""Engines started by adaras commands on CPU get a KV cache that fits the job and the machine
(vLLM's default 0.92 of RAM fails on an ordinary CPU machine); explicit flags always win."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adaras_vllm.engine.engine_memory import (
    FLOOR_BYTES,
    GIB,
    MIB,
    choose_kv_cache_bytes,
    fit_engine_memory,
    kv_bytes_per_token,
    on_cpu,
)
from adaras_vllm.organism.assets import ORGANISM_DIR

# Qwen3-1.7B's attention shape: 28 layers, 8 KV heads of 128, bf16 -> 112 KiB per token.
QWEN3_1_7B = SimpleNamespace(num_hidden_layers=28, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, hidden_size=2048,
                             max_position_embeddings=40960, dtype="bfloat16")


def test_kv_bytes_per_token_counts_keys_and_values_of_every_layer():
    assert kv_bytes_per_token(QWEN3_1_7B) == 2 * 28 * 8 * 128 * 2
    assert kv_bytes_per_token(QWEN3_1_7B, "float32") == 2 * 28 * 8 * 128 * 4


def test_a_small_job_gets_what_it_needs():
    chosen, why = choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=1024,
                                        max_num_seqs=8, available=16 * GIB)
    assert chosen == 8 * 1024 * 114688 and "8 sequences x 1024 tokens" in why


def test_a_large_job_is_capped_to_a_share_of_available_memory():
    chosen, _ = choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=4096,
                                      max_num_seqs=256, available=10 * GIB)
    assert chosen == int(10 * GIB * 0.4)


def test_never_less_than_one_full_length_sequence_nor_the_floor():
    chosen, _ = choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=None,
                                      max_num_seqs=256, available=10 * GIB)
    assert chosen == 40960 * 114688  # 4.4 GiB: above the 40% cap, still one sequence
    tiny, _ = choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=16,
                                    max_num_seqs=1, available=10 * GIB)
    assert tiny == FLOOR_BYTES


def test_a_context_that_cannot_fit_is_refused_naming_max_model_len():
    with pytest.raises(ValueError, match="smaller --max-model-len"):
        choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=None,
                              max_num_seqs=1, available=4 * GIB)


def test_tensor_parallel_workers_each_hold_their_share():
    one, _ = choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=1024,
                                   max_num_seqs=8, available=16 * GIB)
    two, _ = choose_kv_cache_bytes(QWEN3_1_7B, dtype="auto", max_model_len=1024,
                                   max_num_seqs=8, available=16 * GIB, tensor_parallel_size=2)
    assert two == one // 2


@pytest.mark.parametrize("explicit", [{"kv_cache_memory_bytes": 123 * MIB},
                                      {"gpu_memory_utilization": 0.5}])
def test_explicit_memory_flags_are_kept_as_given(explicit):
    kw = {"dtype": "float32", **explicit}
    assert fit_engine_memory(str(ORGANISM_DIR), kw) == kw


@pytest.mark.skipif(not on_cpu(), reason="the CPU backend's sizing")
def test_on_cpu_the_choice_is_made_and_said(capsys):
    kw = fit_engine_memory(str(ORGANISM_DIR), {"dtype": "float32", "max_model_len": 256,
                                               "max_num_seqs": 128})
    assert kw["kv_cache_memory_bytes"] == 128 * 256 * 4096  # 4 KiB per token in float32
    assert "KV cache 128 MiB" in capsys.readouterr().err


@pytest.mark.skipif(not on_cpu(), reason="the CPU backend's sizing")
def test_a_model_without_a_readable_config_is_left_to_vllm_and_said(tmp_path, capsys):
    kw = {"dtype": "auto", "max_num_seqs": 8}
    assert fit_engine_memory(str(tmp_path / "nothing-here"), kw) == kw
    assert "cannot size the CPU KV cache" in capsys.readouterr().err
