"""``adaras serve --api-server-count N``: vLLM's own multi-process front end, each process
with the steering layer.

vLLM starts the engines once and spawns N API server processes that share the listening
socket; each builds its own app. We keep vLLM's launcher and swap only the function each
spawned process runs for ``api_process``: it installs steering and our guards in that
process, adds the steering layer (fields, 400s, audit object, auth, body limit, routes)
to the app vLLM builds there, and checks every engine's workers before serving. vLLM
switches Prometheus to multiprocess mode for N > 1, so our counters add up across the
processes on every ``/metrics``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from adaras_vllm.engine.patches import Patch, apply

#: Carried on the pickled argument namespace to each spawned API process.
API_KEYS_ATTR = "adaras_api_keys"


def _running_api_process(_original):  # noqa: ANN001, ANN202
    return api_process


#: This API process's engine front end's maps (one engine client per API process), set
#: before vLLM builds the app.
_serving: list = []


def _adding_the_steering_layer(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    def build_app(args, *rest, **kwargs):  # noqa: ANN001, ANN202
        from .app import install_steering_layer, policy_of

        app = original(args, *rest, **kwargs)
        registry = _serving[-1]
        install_steering_layer(app, policy_of(registry), getattr(args, API_KEYS_ATTR, []),
                               registry, max_body_bytes=args.max_request_body_bytes)
        return app

    return build_app


def _checking_workers_first(original):  # noqa: ANN001, ANN202
    @functools.wraps(original)
    async def build_and_serve(engine_client, listen_address, sock, args, *rest, **kwargs):  # noqa: ANN001, ANN202
        from .app import check_engine_steers, serving_registry

        registry = serving_registry(engine_client)
        _serving.append(registry)
        layers = await check_engine_steers(engine_client, registry.config)
        print(f"adaras: API process on {listen_address} serving map(s) "
              f"{', '.join(registry.names)} (steered layers {layers})", flush=True)
        return await original(engine_client, listen_address, sock, args, *rest, **kwargs)

    return build_and_serve


_UNTIL = "vLLM builds extra API processes' apps through a plugin hook"
LAUNCHER_PATCHES = (
    Patch("vllm.v1.utils:run_api_server_worker_proc", wrap=_running_api_process,
          why="each spawned API process runs ours, which installs the steering layer",
          until=_UNTIL),
)
API_PROCESS_PATCHES = (
    Patch("vllm.entrypoints.launchers.api_server.entry:build_app", params=("args",),
          wrap=_adding_the_steering_layer,
          why="the app of each API process gets the steering layer", until=_UNTIL),
    Patch("vllm.entrypoints.launchers.api_server.entry:build_and_serve",
          params=("engine_client", "listen_address", "sock", "args"),
          wrap=_checking_workers_first,
          why="each API process checks every engine's workers before serving", until=_UNTIL),
)


def api_process(listen_address: Any, sock: Any, args: argparse.Namespace,
                client_config: dict | None = None, **uvicorn_kwargs: Any) -> None:
    """What each spawned API server process runs (it imports this module by name)."""
    from vllm.v1.utils import run_api_server_worker_proc

    from .app import install_in_every_process

    install_in_every_process()
    apply(API_PROCESS_PATCHES)
    run_api_server_worker_proc(listen_address, sock, args, client_config, **uvicorn_kwargs)


def serve_with_api_processes(args: argparse.Namespace, api_keys: list[str]) -> None:
    """Start the engines and ``args.api_server_count`` API processes (vLLM's launcher)."""
    from vllm.entrypoints.cli.serve import run_multi_api_server

    setattr(args, API_KEYS_ATTR, list(api_keys))
    apply(LAUNCHER_PATCHES)
    run_multi_api_server(args)
