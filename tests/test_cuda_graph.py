"""The steer op under CUDA-graph capture: captured once, replayed with new alpha/map
buffers (filled in place, as the engine does each step). Skips without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaras_vllm.engine.state import SteeringState
from adaras_vllm.engine.steer import build_layer_table, steer_
from adaras_vllm.maps import NeuronMap

from steering_helpers import fill_from_counts

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _table():
    a = NeuronMap.from_layers("a", {0: ([1, 7, 30], [1.0, -2.0, 0.5])}, num_hidden_layers=1,
                              intermediate_size=64, hidden_size=8)
    b = NeuronMap.from_layers("b", {0: ([7, 40], [3.0, 4.0])}, num_hidden_layers=1,
                              intermediate_size=64, hidden_size=8)
    return build_layer_table([a, b], 0, 0, 64)


def _reference(x, state, layer_table):
    """Plain per-token loop: x[t, idx] += alpha[t] * w[map[t]], in x's dtype."""
    y = x.clone()
    table, idx = layer_table.table.cuda(), layer_table.indices.cuda()
    for t in range(x.shape[0]):
        y[t, idx] += (state.alpha[t] * table[state.map_id[t]]).to(y.dtype)
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_steer_op_replays_with_changed_alpha_and_map(dtype):
    lt = _table()
    indices = lt.indices.cuda()
    state = SteeringState(32, "cuda", lt.table, dtype)
    buffers = (state.alpha.data_ptr(), state.map_id.data_ptr(), state.delta.data_ptr())
    x_static = torch.zeros(8, 64, device="cuda", dtype=dtype)
    out = torch.empty_like(x_static)
    weight = torch.randn(64, 16, device="cuda", dtype=dtype)

    def step():
        out.copy_(x_static)
        steer_(out, state.delta, indices)
        return out @ weight

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm up outside the graph
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = step()

    rng = np.random.default_rng(0)
    for trial in range(4):
        x_static.copy_(torch.randn(8, 64, device="cuda", dtype=dtype))
        req_alpha = rng.choice([0.0, 0.3, -1.0, 4.0], size=3).astype(np.float32)
        req_map = rng.integers(0, 2, size=3)
        fill_from_counts(state, req_alpha, req_map, np.array([3, 3, 2]), np.array([0, 5, 9]),
                   np.array([2, 1, 4]))
        graph.replay()
        torch.cuda.synchronize()
        want = _reference(x_static, state, lt) @ weight
        torch.testing.assert_close(y_static, want, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                                   atol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert (state.alpha.data_ptr(), state.map_id.data_ptr(), state.delta.data_ptr()) == buffers


def test_torch_compiled_steer_op_captures_under_cuda_graphs():
    lt = _table()
    indices = lt.indices.cuda()
    state = SteeringState(32, "cuda", lt.table)

    @torch.compile(mode="reduce-overhead", fullgraph=True)
    def f(x):
        return steer_(x.clone(), state.delta, indices)

    x = torch.randn(8, 64, device="cuda")
    for req_alpha in ([0.3, 0.0, 4.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]):
        fill_from_counts(state, np.array(req_alpha, np.float32), np.array([0, 1, 1]), np.array([3, 3, 2]),
                   np.array([0, 5, 9]), np.array([2, 1, 4]))
        got = f(x).clone()
        torch.cuda.synchronize()
        torch.testing.assert_close(got, _reference(x, state, lt))
