"""The steering pieces in isolation: parameters, positions, buffers, tables, the op.

Fast (no vLLM engine); the engine tests check the same rules end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adaras_vllm.engine.params import SteeringParamError, parse_steering
from adaras_vllm.engine.state import SteeringState, steered_token_alpha
from adaras_vllm.engine.steer import SteeringTables, build_layer_table, steer_
from adaras_vllm.maps import NeuronMap

from steering_helpers import fill_from_counts

MAPS = ["default_map", "other_map"]


def _map(name: str, layers: dict, intermediate: int = 16) -> NeuronMap:
    return NeuronMap.from_layers(
        name, layers, num_hidden_layers=4, intermediate_size=intermediate, hidden_size=8
    )


def _state(max_tokens: int = 16, width: int = 1) -> SteeringState:
    return SteeringState(max_tokens, "cpu", torch.ones(2, width))


def _steer_layer(maps, layer, x, req_alpha, req_map, num_scheduled, num_computed, prompt_len,
                 shard=(0, 16)):
    """Steer ``x`` as one layer of an engine would: fill the buffers, then the op."""
    t = build_layer_table(maps, layer, *shard)
    if t is None:
        return x
    state = SteeringState(32, "cpu", t.table, x.dtype)
    fill_from_counts(state, np.array(req_alpha, np.float32), np.array(req_map), np.array(num_scheduled),
               np.array(num_computed), np.array(prompt_len))
    return steer_(x, state.delta, t.indices)


# ---- request parameters ---------------------------------------------------------------


def test_absent_fields_mean_unsteered_with_the_default_map():
    p = parse_steering(None, MAPS)
    assert (p.alpha, p.map_name, p.steered) == (0.0, "default_map", False)


def test_alpha_and_map_are_read_from_extra_args():
    p = parse_steering({"steer_alpha": 0.3, "steer_map": "other_map"}, MAPS)
    assert (p.alpha, p.map_name, p.steered) == (0.3, "other_map", True)


def test_integer_alpha_is_accepted_as_a_number():
    assert parse_steering({"steer_alpha": -1}, MAPS).alpha == -1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "abc", "0.3", True, None, [1.0]])
def test_alpha_that_is_not_a_finite_number_is_refused_naming_the_field(bad):
    message = r"steer_alpha must be a finite number in \[-8, 8\]"
    with pytest.raises(SteeringParamError, match=message):
        parse_steering({"steer_alpha": bad}, MAPS)


def test_alpha_beyond_the_operator_bound_is_refused():
    with pytest.raises(SteeringParamError, match=r"\[-2, 2\], got 2.5"):
        parse_steering({"steer_alpha": 2.5}, MAPS, max_alpha=2.0)


def test_unknown_map_is_refused_listing_the_loaded_maps():
    with pytest.raises(SteeringParamError, match=r"steer_map must be one of the loaded maps "
                                                 r"\(default_map, other_map\), got 'nope'"):
        parse_steering({"steer_map": "nope"}, MAPS)


def test_misspelt_steering_field_is_refused():
    with pytest.raises(SteeringParamError, match=r"unknown steering field\(s\) 'steer_alpah'"):
        parse_steering({"steer_alpah": 0.3}, MAPS)


def test_mode_off_disables_steering_whatever_alpha_says():
    assert not parse_steering({"steer_alpha": 0.3, "steer_mode": "off"}, MAPS).steered


def test_unknown_mode_is_refused():
    with pytest.raises(SteeringParamError, match="steer_mode must be one of always, off"):
        parse_steering({"steer_mode": "sometimes"}, MAPS)


def test_negative_zero_alpha_is_unsteered():
    assert not parse_steering({"steer_alpha": -0.0}, MAPS).steered


# ---- steered positions ---------------------------------------------------------------


def test_prefill_steers_only_the_last_prompt_token():
    a = steered_token_alpha(np.array([0.5]), np.array([4]), np.array([0]), np.array([4]))
    assert a.tolist() == [0.0, 0.0, 0.0, 0.5]


def test_decode_tokens_are_always_steered():
    a = steered_token_alpha(np.array([0.5]), np.array([1]), np.array([9]), np.array([4]))
    assert a.tolist() == [0.5]


def test_chunked_prefill_steers_position_prompt_len_minus_one_in_whichever_chunk_holds_it():
    # prompt of 10 tokens prefilled in chunks of 4, 4, 2: only the last chunk's last token.
    chunks = [(0, 4), (4, 4), (8, 2)]
    got = [
        steered_token_alpha(np.array([1.0]), np.array([n]), np.array([done]), np.array([10]))
        for done, n in chunks
    ]
    assert np.concatenate(got).tolist() == [0.0] * 9 + [1.0]


def test_recompute_after_preemption_steers_generated_positions_again():
    # prompt 3, 4 tokens generated, all 7 recomputed from scratch: positions 2..6 steered.
    a = steered_token_alpha(np.array([2.0]), np.array([7]), np.array([0]), np.array([3]))
    assert a.tolist() == [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_mixed_batch_rows_get_their_own_alpha_and_positions():
    a = steered_token_alpha(
        req_alpha=np.array([1.0, 0.0, -2.0]),
        num_scheduled=np.array([3, 1, 2]),
        num_computed=np.array([0, 5, 4]),
        prompt_len=np.array([3, 2, 6]),
    )
    assert a.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, -2.0]


# ---- static buffers --------------------------------------------------------------------


def test_fill_lays_out_alpha_and_map_id_per_token():
    s = _state(16)
    fill_from_counts(s, np.array([0.5, 2.0]), np.array([1, 0]), np.array([2, 1]), np.array([0, 7]),
           np.array([2, 3]))
    assert s.alpha[:3].tolist() == [0.0, 0.5, 2.0]
    assert s.map_id[:3].tolist() == [1, 1, 0]


def test_a_shorter_step_zeroes_what_the_longer_step_left_behind():
    s = _state(16)
    fill_from_counts(s, np.array([1.0]), np.array([1]), np.array([6]), np.array([10]), np.array([2]))
    fill_from_counts(s, np.array([1.0]), np.array([1]), np.array([2]), np.array([16]), np.array([2]))
    assert s.alpha[2:].abs().sum().item() == 0.0
    assert s.map_id[2:].abs().sum().item() == 0


def test_an_unsteered_step_clears_the_buffers():
    s = _state(16)
    fill_from_counts(s, np.array([1.0]), np.array([1]), np.array([5]), np.array([10]), np.array([2]))
    fill_from_counts(s, np.array([0.0]), np.array([1]), np.array([5]), np.array([10]), np.array([2]))
    assert s.alpha.abs().sum().item() == 0.0 and s.map_id.abs().sum().item() == 0


def test_buffers_are_never_rebound_so_a_compiled_graph_keeps_reading_them():
    s = _state(8)
    ptr = (s.alpha.data_ptr(), s.map_id.data_ptr())
    fill_from_counts(s, np.array([1.0]), np.array([1]), np.array([3]), np.array([0]), np.array([1]))
    s.clear()
    assert (s.alpha.data_ptr(), s.map_id.data_ptr()) == ptr


def test_a_step_larger_than_the_buffers_is_refused():
    s = _state(4)
    with pytest.raises(RuntimeError, match="5 tokens but the steering buffers hold 4"):
        fill_from_counts(s, np.array([1.0]), np.array([0]), np.array([5]), np.array([0]), np.array([1]))


# ---- layer tables and tensor-parallel shards -------------------------------------------


def test_maps_sharing_a_layer_merge_into_one_table_over_the_union_of_neurons():
    a = _map("a", {1: ([2, 5], [1.0, 2.0])})
    b = _map("b", {1: ([5, 9], [3.0, 4.0]), 2: ([0], [1.0])})
    t = build_layer_table([a, b], 1, 0, 16)
    assert t.indices.tolist() == [2, 5, 9]
    assert t.table.tolist() == [[1.0, 2.0, 0.0], [0.0, 3.0, 4.0]]


def test_a_layer_no_map_steers_has_no_table():
    a = _map("a", {1: ([2], [1.0])})
    assert build_layer_table([a], 3, 0, 16) is None


def test_tensor_parallel_ranks_take_only_their_shard_reindexed_locally():
    a = _map("a", {0: ([1, 7, 8, 15], [1.0, 2.0, 3.0, 4.0])})
    rank0 = build_layer_table([a], 0, 0, 8)
    rank1 = build_layer_table([a], 0, 8, 8)
    assert (rank0.indices.tolist(), rank0.table.tolist()) == ([1, 7], [[1.0, 2.0]])
    assert (rank1.indices.tolist(), rank1.table.tolist()) == ([0, 7], [[3.0, 4.0]])


def test_sharded_steering_equals_unsharded_steering():
    torch.manual_seed(0)
    a = _map("a", {0: ([0, 3, 4, 9, 12, 15], [1.0, -2.0, 0.5, 3.0, -1.0, 2.5])})
    x = torch.randn(5, 16)
    batch = dict(req_alpha=[1.0, -0.5], req_map=[0, 0], num_scheduled=[3, 2],
                 num_computed=[0, 4], prompt_len=[2, 3])
    want = _steer_layer([a], 0, x.clone(), **batch)
    parts = [
        _steer_layer([a], 0, x[:, r * 4:(r + 1) * 4].clone(), **batch, shard=(r * 4, 4))
        for r in range(4)
    ]
    assert torch.equal(torch.cat(parts, dim=1), want)


def test_layer_tables_lie_side_by_side_in_one_table():
    a = _map("a", {0: ([1, 3], [1.0, 2.0]), 2: ([5], [3.0])})
    layers = {i: build_layer_table([a], i, 0, 16) for i in (0, 2)}
    t = SteeringTables.concat(layers, 1)
    assert t.columns == {0: (0, 2), 2: (2, 3)}
    assert t.table.tolist() == [[1.0, 2.0, 3.0]]


# ---- the op ----------------------------------------------------------------------------


def test_steer_adds_alpha_times_the_tokens_map_weights():
    a = _map("a", {0: ([1, 3], [2.0, -1.0])})
    b = _map("b", {0: ([3], [10.0])})
    x = torch.zeros(3, 16)
    # three decode tokens: alpha 0.5 with map a, alpha 2 with map b, alpha 0
    _steer_layer([a, b], 0, x, [0.5, 2.0, 0.0], [0, 1, 0], [1, 1, 1], [5, 5, 5], [2, 2, 2])
    expect = torch.zeros(3, 16)
    expect[0, 1], expect[0, 3] = 1.0, -0.5
    expect[1, 3] = 20.0
    assert torch.equal(x, expect)


def test_alpha_zero_leaves_activations_bit_identical():
    a = _map("a", {0: ([1, 3], [2.0, -1.0])})
    x = torch.randn(4, 16)
    y = _steer_layer([a], 0, x.clone(), [0.0], [0], [4], [0], [1])
    assert torch.equal(y, x)


def test_rows_past_the_current_tokens_stay_zero_for_padding():
    a = _map("a", {0: ([1], [1.0])})
    t = build_layer_table([a], 0, 0, 16)
    s = SteeringState(8, "cpu", t.table)
    fill_from_counts(s, np.array([1.0]), np.array([0]), np.array([6]), np.array([10]), np.array([2]))
    fill_from_counts(s, np.array([1.0]), np.array([0]), np.array([2]), np.array([16]), np.array([2]))
    assert s.delta[:2, 0].tolist() == [1.0, 1.0]
    assert s.delta[2:].abs().sum().item() == 0.0


def test_steer_works_in_half_precision_activations():
    a = _map("a", {0: ([1], [2.0])})
    x = torch.zeros(2, 16, dtype=torch.bfloat16)
    _steer_layer([a], 0, x, [1.0], [0], [2], [3], [1])
    assert x[:, 1].tolist() == [2.0, 2.0]


def test_compiled_op_reads_the_buffers_by_reference_not_as_constants():
    a = _map("a", {0: ([1], [1.0])})
    t = build_layer_table([a], 0, 0, 16)
    state = SteeringState(4, "cpu", t.table)

    @torch.compile(fullgraph=True, dynamic=True)
    def f(x):
        return steer_(x.clone(), state.delta, t.indices)

    assert f(torch.zeros(2, 16))[:, 1].tolist() == [0.0, 0.0]
    fill_from_counts(state, np.array([1.0, 3.0]), np.array([0, 0]), np.array([1, 1]), np.array([4, 4]),
               np.array([2, 2]))
    assert f(torch.zeros(2, 16))[:, 1].tolist() == [1.0, 3.0]


def test_an_adaptive_chunk_never_holds_the_last_prompt_token_with_earlier_ones():
    from adaras_vllm.engine.scheduler_trim import trimmed_chunk

    assert trimmed_chunk(10, 0, 10) == 9  # whole prompt at once -> stop before P-1
    assert trimmed_chunk(10, 4, 64) == 5  # a later chunk reaching past P-1
    assert trimmed_chunk(10, 9, 1) == 1  # P-1 alone
    assert trimmed_chunk(10, 0, 5) == 5  # a chunk ending before P-1
    assert trimmed_chunk(10, 0, 9) == 9  # a chunk ending right at P-2
    assert trimmed_chunk(1, 0, 1) == 1  # a one-token prompt has nothing to pool
    assert trimmed_chunk(10, 12, 1) == 1  # decoding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_gather_add_scatter_form_is_bit_identical_to_index_add(dtype):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(37, 64, generator=gen) * 3).to(dtype)
    idx = torch.tensor([0, 3, 9, 31, 63])
    delta = (torch.randn(40, 5, generator=gen) * 0.3).to(dtype)
    scratch = torch.zeros(40, 5, dtype=dtype)
    want = steer_(x.clone(), delta, idx)
    got = steer_(x.clone(), delta, idx, scratch)
    assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if dtype != torch.float32 else torch.int32))
