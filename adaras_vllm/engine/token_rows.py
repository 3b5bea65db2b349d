"""Which request each scheduled token belongs to, derived on the device.

Steering, capture and the gate all need a per-token view of per-request values. Building
that view on the host assumes a token layout (rows back to back, in ``num_scheduled``
order) that vLLM does not promise: adaptive draft verification rewrites
``query_start_loc`` on the device only. So the host writes per-request rows and the
device maps tokens to rows from the batch's own ``query_start_loc``.
"""

from __future__ import annotations

import torch


class TokenRequestIndex:
    """Static buffers for ``token -> request row`` (a searchsorted over request ends).

    Tokens past the last request's end map to row ``num_reqs``: callers keep that row as a
    neutral "padding" row (alpha 0, the capture trash slot, ...).
    """

    def __init__(self, max_tokens: int, max_reqs: int, device: torch.device) -> None:
        self.max_tokens = max_tokens
        self.max_reqs = max_reqs
        self._ends = torch.zeros(max_reqs, dtype=torch.int64, device=device)
        self._token_index = torch.arange(max_tokens, dtype=torch.int64, device=device)
        self.row = torch.zeros(max_tokens, dtype=torch.int64, device=device)

    def build(self, query_start_loc: torch.Tensor, num_reqs: int, total: int) -> torch.Tensor:
        """Fill and return ``row[:total]`` from ``query_start_loc`` (``[num_reqs + 1]``)."""
        self._ends[:num_reqs].copy_(query_start_loc[1 : num_reqs + 1])
        out = self.row[:total]
        torch.searchsorted(self._ends[:num_reqs], self._token_index[:total], right=True,
                           out=out)
        return out
