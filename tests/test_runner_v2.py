"""The V2-runner hooks (vLLM's CUDA default), exercised on a stand-in runner that calls
them the way ``v1/worker/gpu/model_runner.py`` does in vLLM 0.32. The real V2 runner
needs CUDA; this pins down our side: parameters survive a request being re-added, and
the per-token buffers follow the V2 batch as the device holds it (``query_start_loc``,
``positions``, ``idx_mapping``, ``prompt_len``), not the host's optimistic mirrors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from adaras_vllm.engine.registry import MapRegistry
from adaras_vllm.engine.runner_steering import STEERING_ATTR, RunnerSteering
from adaras_vllm.engine.runner_v2 import filling_after_prepare, forgetting, remembering_new
from adaras_vllm.engine.state import SteeringState
from adaras_vllm.engine.step_layout import StepLayout
from adaras_vllm.maps import NeuronMap


def _registry() -> MapRegistry:
    maps = [NeuronMap.from_layers(n, {0: ([1], [w])}, num_hidden_layers=1, intermediate_size=4,
                                  hidden_size=4) for n, w in (("a", 1.0), ("b", 10.0))]
    return MapRegistry(maps)


class StandInV2Runner:
    """Only the call pattern of the V2 runner that the hooks rely on."""

    def __init__(self) -> None:
        registry = _registry()
        table = torch.tensor([[1.0], [10.0]])
        setattr(self, STEERING_ATTR, RunnerSteering(registry, SteeringState(16, "cpu", table)))
        self.req_states = SimpleNamespace(prompt_len=SimpleNamespace(np=np.zeros(8, np.int32)))
        self.slots: dict[str, int] = {}

    def add_requests(self, scheduler_output) -> None:  # noqa: ANN001
        for new in scheduler_output.scheduled_new_reqs:
            self._remove_request(new.req_id)  # as vLLM does for streaming-input updates
            slot = self.slots.setdefault(new.req_id, len(self.slots))
            self.req_states.prompt_len.np[slot] = new.prompt_len

    def _remove_request(self, req_id: str) -> bool:
        return True

    def prepare_inputs(self, req_ids, num_scheduled, num_computed, host_mirror=None):  # noqa: ANN001
        """``num_computed`` is the device's truth; ``host_mirror`` what the host's
        ``num_computed_tokens_np`` says (it may run ahead after speculative rejections)."""
        idx = np.array([self.slots[r] for r in req_ids])
        qsl = np.concatenate([[0], np.cumsum(num_scheduled)]).astype(np.int32)
        positions = np.concatenate([np.arange(c, c + n) for c, n in zip(num_computed,
                                                                        num_scheduled)])
        padded = np.concatenate([positions, np.zeros(3, np.int64)])  # CUDA-graph padding
        return SimpleNamespace(
            req_ids=req_ids, num_reqs=len(req_ids), idx_mapping_np=idx,
            query_start_loc_np=qsl, query_start_loc=torch.from_numpy(qsl),
            num_tokens=int(qsl[-1]), positions=torch.from_numpy(padded),
            num_computed_tokens_np=np.array(host_mirror if host_mirror else num_computed))


StandInV2Runner.add_requests = remembering_new(StandInV2Runner.add_requests)
StandInV2Runner._remove_request = forgetting(StandInV2Runner._remove_request)
StandInV2Runner.prepare_inputs = filling_after_prepare(StandInV2Runner.prepare_inputs)


def _new(req_id, prompt_len, **extra):
    return SimpleNamespace(req_id=req_id, prompt_len=prompt_len,
                           sampling_params=SimpleNamespace(extra_args=extra))


def test_v2_hooks_steer_the_right_tokens_of_a_mixed_batch():
    runner = StandInV2Runner()
    runner.add_requests(SimpleNamespace(scheduled_new_reqs=[
        _new("r1", 3, steer_alpha=0.5), _new("r2", 2, steer_alpha=2.0, steer_map="b")]))
    # r2 prefill (2 tokens) and r1 prefill (3 tokens), r2 listed first in the batch
    runner.prepare_inputs(["r2", "r1"], [2, 3], [0, 0])
    state = getattr(runner, STEERING_ATTR).state
    assert state.delta[:5, 0].tolist() == [0.0, 20.0, 0.0, 0.0, 0.5]


def test_v2_steering_survives_a_request_being_removed_and_re_added():
    runner = StandInV2Runner()
    runner.add_requests(SimpleNamespace(scheduled_new_reqs=[_new("r1", 1, steer_alpha=1.0)]))
    runner.add_requests(SimpleNamespace(scheduled_new_reqs=[_new("r1", 1, steer_alpha=1.0)]))
    runner.prepare_inputs(["r1"], [1], [4])
    assert getattr(runner, STEERING_ATTR).state.delta[0, 0].item() == 1.0


def test_v2_steered_positions_come_from_the_device_not_the_host_mirror():
    runner = StandInV2Runner()
    runner.add_requests(SimpleNamespace(scheduled_new_reqs=[_new("r1", 6, steer_alpha=1.0)]))
    # The device is at position 3 (prefill chunk 3..5): only position 5 = P - 1 is steered,
    # although the host mirror claims 5 tokens were already computed.
    runner.prepare_inputs(["r1"], [3], [3], host_mirror=[5])
    assert getattr(runner, STEERING_ATTR).state.delta[:4, 0].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_v2_files_gate_results_under_the_front_ends_tag_though_it_keeps_no_params():
    """V2 passes no SamplingParams at fill time: the tag is remembered at admission."""
    from adaras_vllm.engine.gate_runtime import GateState
    from adaras_vllm.engine.resolved import GATE_KEY
    from adaras_vllm.maps.gate_file import random_gate

    gate = random_gate(2, 3, num_hidden_layers=1, intermediate_size=4, layers=[0], threshold=1.0)
    m = NeuronMap.from_layers("g", {0: ([1], [1.0])}, num_hidden_layers=1, intermediate_size=4,
                              hidden_size=4).with_gate(gate)
    registry = MapRegistry([m])
    local = [(0, j, int(n)) for j, n in enumerate(gate.neurons.tolist())]
    state = GateState([m], {0: (0, 2)}, local, max_tokens=16, max_slots=4,
                      device=torch.device("cpu"))
    steering = RunnerSteering(registry, SteeringState(16, "cpu", torch.tensor([[1.0]])), state)
    params = SimpleNamespace(extra_args={"steer_alpha": 1.0, "steer_mode": "adaptive",
                                         "steer_map": "g", GATE_KEY: "tag-1"})
    steering.remember("internal-id-abc", params)  # admission (add_requests)
    for computed, scheduled in ((0, 3), (3, 1)):  # prompt of 4: pool 0..2, decide, steer 3
        qsl = torch.tensor([0, scheduled])
        pos = torch.arange(computed, computed + scheduled)
        steering.on_step(StepLayout(["internal-id-abc"], np.array([scheduled]),
                                    np.array([computed]), np.array([4]), qsl, pos),
                         lambda r: None)
        state.features[:scheduled] = 1.0  # the forward: copy features, pool
        state.pool_(scheduled)
    results = state.fetch()
    assert list(results) == ["tag-1"] and results["tag-1"]["fired"] is True
    assert float(steering.state.alpha[0]) == 1.0  # position 3 steered once fired
