"""Test helpers for the steering buffers."""

from __future__ import annotations

import numpy as np

from adaras_vllm.engine.state import SteeringState
from adaras_vllm.engine.step_layout import StepLayout


def fill_from_counts(state: SteeringState, req_alpha: np.ndarray, req_map_id: np.ndarray,
                     num_scheduled: np.ndarray, num_computed: np.ndarray,
                     prompt_len: np.ndarray) -> None:
    """``fill_requests`` with the layout a runner would build from these counts."""
    layout = StepLayout.from_counts([str(i) for i in range(len(req_alpha))], num_scheduled,
                                    num_computed, prompt_len, device=state.alpha.device)
    state.fill_requests(req_alpha, req_map_id, layout.prompt_len, layout.query_start_loc,
                        layout.positions)
