"""Calls that must reach every worker of every data-parallel engine.

``AsyncLLM.collective_rpc`` answers with the first engine's workers only when
``--data-parallel-size`` > 1 (vLLM's DP client sends to all, returns engine 0's result).
Start-up checks, ``/v1/steering/status`` and gate results need every rank's answer.
"""

from __future__ import annotations

from typing import Any


async def every_worker(engine_client: Any, method: str, args: tuple = ()) -> list[Any]:
    """``method`` on every worker of every engine this front end manages, one answer
    per worker, engines in order."""
    core = getattr(engine_client, "engine_core", None)
    call_all = getattr(core, "call_utility_all_async", None)
    if call_all is None:  # one engine (or a client without DP): its collective_rpc is all
        return list(await engine_client.collective_rpc(method, args=args))
    per_engine = await call_all("collective_rpc", method, None, args, None)
    return [answer for workers in per_engine for answer in workers]


async def merged_from_every_worker(engine_client: Any, method: str,
                                   args: tuple = ()) -> dict[str, Any]:
    """Keyed answers (``{key: value}``) from every worker, joined: a request's entry comes
    from the data-parallel rank that ran it (tensor-parallel ranks agree)."""
    merged: dict[str, Any] = {}
    for answer in await every_worker(engine_client, method, args):
        merged.update(answer or {})
    return merged
