"""One step's batch, as the model runner laid it out: the single input of every per-step fill.

Steering, the gate and capture all need the same facts about a step: which requests run,
in which rows, how far each has got, its prompt length, and the device's own token
layout (``query_start_loc`` and ``positions``: vLLM may edit them on the device only).
Each runner type builds one ``StepLayout`` where its batch is final (``from_v1``,
``from_v2``); every consumer reads that, so no two of them can slice a step differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class StepLayout:
    """Per batch row (host) and per token (device) facts of one step, unpadded."""

    req_ids: list[str]
    num_scheduled: np.ndarray  # int64 [R]
    num_computed: np.ndarray  # int64 [R], tokens before this step
    prompt_len: np.ndarray  # int64 [R]
    query_start_loc: torch.Tensor  # [R + 1] on the device
    positions: torch.Tensor  # [T] on the device

    @property
    def num_reqs(self) -> int:
        return len(self.req_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def from_v1(cls, runner: Any, num_scheduled_tokens: np.ndarray) -> StepLayout:
        """V1 (``GPUModelRunner._prepare_inputs``, also the CPU runner)."""
        batch = runner.input_batch
        n = batch.num_reqs
        scheduled = np.asarray(num_scheduled_tokens[:n], dtype=np.int64)
        return cls(
            req_ids=list(batch.req_ids[:n]),
            num_scheduled=scheduled,
            num_computed=np.array(batch.num_computed_tokens_cpu[:n], dtype=np.int64),
            prompt_len=np.array(batch.num_prompt_tokens[:n], dtype=np.int64),
            query_start_loc=runner.query_start_loc.gpu[: n + 1],
            positions=runner.positions[: int(scheduled.sum())],
        )

    @classmethod
    def from_v2(cls, runner: Any, batch: Any) -> StepLayout:
        """V2 (``v1/worker/gpu/model_runner.py``): the prompt length is the request
        state's ``prompt_len`` (``prefill_len`` changes after preemption), and the token
        layout is the device's (adaptive draft verification edits it there)."""
        n = batch.num_reqs
        rows = batch.idx_mapping_np[:n]
        return cls(
            req_ids=list(batch.req_ids[:n]),
            num_scheduled=np.diff(np.asarray(batch.query_start_loc_np[: n + 1], np.int64)),
            num_computed=np.array(batch.num_computed_tokens_np[:n], dtype=np.int64),
            prompt_len=np.array(runner.req_states.prompt_len.np[rows], dtype=np.int64),
            query_start_loc=batch.query_start_loc[: n + 1],
            positions=batch.positions[: int(batch.num_tokens)],
        )

    @classmethod
    def from_counts(cls, req_ids: list[str], num_scheduled: Any, num_computed: Any,
                    prompt_len: Any, device: torch.device | str = "cpu") -> StepLayout:
        """The layout a runner makes from per-request counts, rows back to back: for
        tools and checks that have no runner (benchmarks, the bare GPU check)."""
        scheduled = np.asarray(num_scheduled, dtype=np.int64)
        computed = np.asarray(num_computed, dtype=np.int64)
        query_start_loc = np.concatenate([[0], np.cumsum(scheduled)]).astype(np.int64)
        total = int(query_start_loc[-1])
        offset = np.arange(total, dtype=np.int64) - np.repeat(query_start_loc[:-1], scheduled)
        positions = np.repeat(computed, scheduled) + offset
        return cls(list(req_ids), scheduled, computed, np.asarray(prompt_len, dtype=np.int64),
                   torch.as_tensor(query_start_loc, device=device),
                   torch.as_tensor(positions, device=device))
