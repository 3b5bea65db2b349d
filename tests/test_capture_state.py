"""Capture-mode bookkeeping, step by step on the CPU: which token goes to which slot,
when a sum restarts, when it is complete, and when a slot is free again. The forward is
played by hand: ``sums[l].index_add_(0, slot[:n], x)`` as each patched layer does."""

from __future__ import annotations

import numpy as np
import torch

from adaras_vllm.engine.capture import CAPTURE_KEY, CaptureResult, CaptureState
from adaras_vllm.engine.step_layout import StepLayout


class _Params:
    def __init__(self, key: str | None) -> None:
        self.extra_args = {CAPTURE_KEY: key} if key is not None else None


def _state(slots: int = 2) -> CaptureState:
    return CaptureState(num_layers=2, width=3, max_slots=slots, max_tokens=16,
                        device=torch.device("cpu"))


def _step(state: CaptureState, rows: list[tuple[str, str | None, int, int, int]]) -> None:
    """rows: (req_id, key, num_scheduled, num_computed, prompt_len); every token of row r
    at position p carries activation value ``100 * (r + 1) + p`` in every column."""
    req_ids = [r[0] for r in rows]
    keys = [state.key_of(r[0], _Params(r[1])) for r in rows]
    sched = np.array([r[2] for r in rows])
    comp = np.array([r[3] for r in rows])
    plen = np.array([r[4] for r in rows])
    state.on_step(StepLayout.from_counts(req_ids, sched, comp, plen), keys)
    values = np.concatenate([100 * (i + 1) + comp[i] + np.arange(sched[i])
                             for i in range(len(rows))]).astype(np.float32)
    x = torch.from_numpy(values)[:, None].expand(-1, 3)
    n = x.shape[0]
    for layer in range(state.num_layers):
        state.sums[layer].index_add_(0, state.slot[:n], x)


def _fetched(state: CaptureState) -> dict[str, CaptureResult]:
    return {k: CaptureResult.from_wire(v) for k, v in state.fetch().items()}


def test_prompt_split_over_chunks_sums_every_prompt_token_once():
    s = _state()
    _step(s, [("a", "k", 3, 0, 5)])
    _step(s, [("a", "k", 2, 3, 5)])
    (res,) = _fetched(s).values()
    assert res.complete and res.tokens == 5
    assert np.allclose(res.sums, sum(100 + p for p in range(5)))


def test_requests_without_a_capture_key_go_to_the_trash_row():
    s = _state()
    _step(s, [("plain", None, 4, 0, 4), ("a", "k", 2, 0, 2)])
    out = _fetched(s)
    assert list(out) == ["k"]
    assert np.allclose(out["k"].sums, (200 + 0) + (200 + 1))


def test_generated_positions_after_the_prompt_are_not_captured():
    s = _state()
    _step(s, [("a", "k", 3, 0, 2)])  # e.g. a prompt of 2 plus one speculative position
    res = _fetched(s)["k"]
    assert res.tokens == 2 and np.allclose(res.sums, 100 + 101)


def test_recompute_from_position_zero_restarts_the_sum():
    s = _state()
    _step(s, [("a", "k", 3, 0, 6)])  # preempted after this chunk ...
    _step(s, [("a", "k", 4, 0, 6)])  # ... recomputed from scratch
    _step(s, [("a", "k", 2, 4, 6)])
    res = _fetched(s)["k"]
    assert res.complete and res.tokens == 6
    assert np.allclose(res.sums, sum(100 + p for p in range(6)))


def test_prompt_partly_served_from_a_cache_is_flagged_incomplete():
    s = _state()
    _step(s, [("a", "k", 2, 4, 6)])  # first seen at position 4: 4 tokens never forwarded
    res = _fetched(s)["k"]
    assert not res.complete and res.tokens == 2


def test_slots_are_reused_once_results_are_harvested():
    s = _state(slots=1)
    _step(s, [("a", "k1", 2, 0, 2)])
    _step(s, [("b", "k2", 3, 0, 3)])  # the only slot was freed by the harvest
    out = _fetched(s)
    assert out["k1"].tokens == 2 and out["k2"].tokens == 3
    assert np.allclose(out["k2"].sums, 100 + 101 + 102)


def test_a_finished_request_that_keeps_decoding_is_not_captured_again():
    s = _state(slots=1)
    _step(s, [("a", "k", 2, 0, 2)])
    _step(s, [("a", "k", 1, 2, 2)])  # decode step of the same request
    out = _fetched(s)
    assert out["k"].tokens == 2 and np.allclose(out["k"].sums, 100 + 101)


def test_more_capturing_requests_than_slots_is_refused_with_the_remedy():
    s = _state(slots=1)
    try:
        _step(s, [("a", "k1", 1, 0, 4), ("b", "k2", 1, 0, 4)])
    except RuntimeError as e:
        assert "slots" in str(e) and "max_num_seqs" in str(e)
    else:
        raise AssertionError("expected a RuntimeError")


def test_dummy_runs_route_every_token_to_the_trash_row():
    s = _state()
    _step(s, [("a", "k", 3, 0, 9)])
    s.clear_tokens()
    assert bool((s.slot == s.trash).all())


def test_wire_format_round_trips_sums_exactly():
    r = CaptureResult(np.arange(6, dtype=np.float32).reshape(2, 3), 4, 4, True)
    back = CaptureResult.from_wire(r.to_wire())
    assert np.array_equal(back.sums, r.sums) and back.tokens == 4 and back.complete


def test_token_slots_follow_the_devices_layout_not_the_host_counts():
    """The device's query_start_loc / positions decide which token lands in which slot."""
    s = _state()
    keys = [s.key_of("a", _Params("ka")), s.key_of("b", _Params("kb"))]
    # Host counts say 3 + 2 tokens; the device's own layout says 2 + 3, at other positions.
    s.on_step(StepLayout(["a", "b"], np.array([3, 2]), np.array([0, 0]), np.array([5, 5]),
                         query_start_loc=torch.tensor([0, 2, 5]),
                         positions=torch.tensor([0, 1, 0, 1, 7])), keys)
    slot_a, slot_b = s._owner["a"][1], s._owner["b"][1]
    assert s.slot[:5].tolist() == [slot_a, slot_a, slot_b, slot_b, s.trash]
    assert bool((s.slot[5:] == s.trash).all())


def test_rows_past_this_steps_tokens_return_to_the_trash_row():
    s = _state()
    _step(s, [("a", "k", 6, 0, 9)])
    _step(s, [("a", "k", 2, 6, 9)])
    assert bool((s.slot[2:] == s.trash).all()) and s.slot[:2].tolist() != [s.trash] * 2


def test_chosen_features_are_kept_per_token_in_position_order_across_chunks():
    s = _state()
    s.token_features = torch.zeros(16, 2)
    s.feature_index = np.array([1, 0])

    def step(rows):  # noqa: ANN001, ANN202 - the forward writes each token's features
        _step(s, rows)
        n = sum(r[2] for r in rows)
        comp = [r[3] for r in rows]
        values = np.concatenate([10 * (i + 1) + comp[i] + np.arange(r[2])
                                 for i, r in enumerate(rows)]).astype(np.float32)
        s.token_features[:n] = torch.from_numpy(np.stack([values, -values], 1))

    step([("a", "k", 3, 0, 5), ("b", None, 2, 0, 2)])
    step([("a", "k", 2, 3, 5)])
    res = _fetched(s)["k"]
    assert res.token_features.tolist() == [[10 + p, -(10 + p)] for p in range(5)]
    assert res.feature_index.tolist() == [1, 0]
    back = CaptureResult.from_wire(res.to_wire())
    assert np.array_equal(back.token_features, res.token_features)
