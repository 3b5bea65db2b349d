"""``adaras serve``: vLLM's OpenAI server with the steering layer installed.

The engine, the OpenAI routes and their serving code are vLLM's own; this module only
adds the steering middleware, routes, schema and auth to the app vLLM builds, and passes
every vLLM engine/server argument through unchanged.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from fastapi import FastAPI

from adaras_vllm.engine.params import MODES, POSITIONS, SteeringDefaults, SteeringParamError
from adaras_vllm.engine.registry import ENV_VAR, MapRegistry, front_end_registry
from adaras_vllm.engine.steering_config import KEY, SteeringConfig

from .auth import ApiKeyMiddleware
from .engine_calls import every_worker
from .openapi import document_steering
from .request_body import DEFAULT_MAX_BODY_BYTES
from .routes import add_steering_routes
from .steering_fields import SteeringPolicy
from .steering_middleware import SteeringMiddleware
from .upstream_guards import guard_responses_rendering

DEFAULT_MAX_STEER_ALPHA = 8.0
DEFAULT_MODEL_NAME = "adaras-tiny-qwen3"


class ServeConfigError(ValueError):
    """``adaras serve`` cannot start as asked: the message says why and what would do."""


def install_steering_layer(app: FastAPI, policy: SteeringPolicy, api_keys: list[str],
                           registry: MapRegistry,
                           max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Add our routes, schema and middleware to an app built by vLLM's ``build_app``."""
    add_steering_routes(app, policy)
    document_steering(app, policy)
    # vLLM's build_app may already have built the middleware stack (its SageMaker
    # bootstrap does); drop it so Starlette rebuilds it, with ours, on the first request.
    app.middleware_stack = None
    app.add_middleware(SteeringMiddleware, registry=registry, max_body_bytes=max_body_bytes)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, api_keys=api_keys)  # outermost: checked first


def build_parser():  # noqa: ANN201 - vLLM's FlexibleArgumentParser
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="adaras serve",
        description="OpenAI-compatible vLLM server with AdaRAS neuron steering. Every vLLM "
        "engine/server argument is accepted as with 'vllm serve'.",
    )
    parser = make_arg_parser(parser)
    # vLLM's parser has its own optional positional ``model_tag``; a second one would
    # swallow nothing and reset the value to None.
    tags = [a for a in parser._actions if a.dest == "model_tag"]
    if tags:
        tags[0].help = "model to serve (default: the committed organism and its map)"
    else:
        parser.add_argument("model_tag", nargs="?", default=None,
                            help="model to serve (default: the committed organism and its map)")
    group = parser.add_argument_group("steering")
    group.add_argument("--neuron-map", action="append", default=[], metavar="NAME=PATH",
                       help="a neuron map to load (repeatable); the first is the default map")
    group.add_argument("--default-steer-alpha", type=float, default=None, metavar="A",
                       help="steer_alpha for requests that give none (default: the chosen "
                       "map's default_alpha)")
    group.add_argument("--default-steer-mode", choices=[*MODES, "map"], default=None,
                       help="steer_mode for requests that give none; 'adaptive' needs a "
                       "correctness gate in the default map (default: the chosen map's "
                       "default_mode, else always)")
    group.add_argument("--default-steer-positions", choices=POSITIONS, default=None,
                       help="steer_positions for requests that give none (default: the "
                       "chosen map's default_positions, else from_last_prompt)")
    group.add_argument("--max-steer-alpha", type=float, default=DEFAULT_MAX_STEER_ALPHA,
                       metavar="M", help="refuse |steer_alpha| > M (default: %(default)s)")
    from adaras_vllm.organism.assets import DEFAULT_ORGANISM, ORGANISMS

    group.add_argument("--organism", choices=sorted(ORGANISMS), default=None,
                       help="with no model named: which committed organism to serve "
                       f"(default: {DEFAULT_ORGANISM}); "
                       + "; ".join(f"{o.name}: {o.summary}" for o in ORGANISMS.values()))
    group.add_argument("--max-request-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                       metavar="N", help="refuse request bodies larger than N bytes with a 413 "
                       "(default: %(default)s)")
    return parser


def _model_given(argv: list[str], args: argparse.Namespace) -> bool:
    return args.model_tag is not None or any(a == "--model" or a.startswith("--model=")
                                             for a in argv)


def _check_alpha_args(args: argparse.Namespace) -> None:
    if not math.isfinite(args.max_steer_alpha) or args.max_steer_alpha < 0:
        raise ServeConfigError(
            f"--max-steer-alpha must be a finite number >= 0, got {args.max_steer_alpha}"
        )
    d = args.default_steer_alpha
    if d is not None and (not math.isfinite(d) or abs(d) > args.max_steer_alpha):
        raise ServeConfigError(
            f"--default-steer-alpha must be a finite number in [-{args.max_steer_alpha:g}, "
            f"{args.max_steer_alpha:g}], got {d}"
        )


def default_model_and_map(organism: str | None = None) -> tuple[Path, str, Path, str]:
    """(model dir, map name, map path, served name) when no model is named: a committed
    organism with its map, or the random tiny demo model if the organism is absent."""
    from adaras_vllm.organism.assets import DEFAULT_ORGANISM, ORGANISMS

    chosen = ORGANISMS[organism or DEFAULT_ORGANISM]
    try:
        model_dir, map_path = chosen.files()
        return model_dir, chosen.map_name, map_path, chosen.served_name
    except FileNotFoundError as e:
        from adaras_vllm.tiny_model import DEMO_MAP_NAME, demo_model_and_map

        print(f"adaras serve: {e}; serving the random tiny demo model instead", flush=True)
        model_dir, demo_map = demo_model_and_map()
        return model_dir, DEMO_MAP_NAME, demo_map, DEFAULT_MODEL_NAME


def _fit_cpu_memory(args: argparse.Namespace) -> None:
    """A named model on CPU without memory flags: a KV cache that fits (vLLM's 0.92 does not)."""
    from adaras_vllm.engine.engine_memory import fit_engine_memory

    try:
        kw = fit_engine_memory(args.model, {
            "dtype": args.dtype, "max_model_len": args.max_model_len,
            "max_num_seqs": args.max_num_seqs,
            "tensor_parallel_size": args.tensor_parallel_size,
            "trust_remote_code": args.trust_remote_code}, who="adaras serve")
    except ValueError as e:
        raise ServeConfigError(f"adaras serve: {_one_line(e)}") from None
    if "kv_cache_memory_bytes" in kw:
        args.kv_cache_memory_bytes = kw["kv_cache_memory_bytes"]


def prepare(argv: list[str]) -> tuple[argparse.Namespace, SteeringPolicy, list[str]]:
    """Parse arguments, choose model and maps, set the engine's environment."""
    args = build_parser().parse_args(argv)
    _check_alpha_args(args)
    map_specs = list(args.neuron_map)
    if args.model_tag is not None:
        args.model = args.model_tag
    if args.organism is not None and _model_given(argv, args):
        raise ServeConfigError(f"adaras serve: --organism picks the model when none is named; "
                         f"it cannot be combined with a model ({args.model})")
    if not _model_given(argv, args):
        model_dir, map_name, map_path, served = default_model_and_map(args.organism)
        if served != DEFAULT_MODEL_NAME:
            from adaras_vllm.organism.assets import DEFAULT_ORGANISM

            args.adaras_organism = args.organism or DEFAULT_ORGANISM
        args.model = str(model_dir)
        if not map_specs:
            map_specs = [f"{map_name}={map_path}"]
        # A tiny model: start in seconds without compiling, and keep CPU memory small.
        if not any(a.endswith("enforce-eager") for a in argv):
            args.enforce_eager = True
        if not any(a.startswith("--gpu-memory-utilization") for a in argv):
            args.gpu_memory_utilization = 0.3
        if not any(a.startswith("--kv-cache-memory") for a in argv):
            args.kv_cache_memory_bytes = 256 << 20
        if not any(a.startswith("--dtype") for a in argv):
            args.dtype = "float32"  # costs nothing at this size; exact, batch-stable answers
        if not args.served_model_name:
            args.served_model_name = [served]
    if not map_specs and os.environ.get(ENV_VAR):
        map_specs = [os.environ[ENV_VAR]]
    if not map_specs:
        raise ServeConfigError("adaras serve: give at least one --neuron-map NAME=PATH")
    if args.headless and (args.api_server_count or 0) > 0:
        raise ServeConfigError("adaras serve: --api-server-count cannot be used with "
                               "--headless (a headless node starts engines, no API server)")
    if args.max_request_body_bytes <= 0:
        raise ServeConfigError("adaras serve: --max-request-body-bytes must be a positive integer, "
                         f"got {args.max_request_body_bytes}")
    spec = ",".join(map_specs)
    defaults = SteeringDefaults(args.max_steer_alpha, args.default_steer_alpha,
                                None if args.default_steer_mode == "map"
                                else args.default_steer_mode, args.default_steer_positions)
    try:
        config, maps = SteeringConfig.from_spec(spec, defaults)
        registry = MapRegistry(maps, config=config)
    except (OSError, ValueError) as e:  # a missing or malformed map: say which, and stop
        raise ServeConfigError(f"adaras serve: {_one_line(e)}") from None
    if _model_given(argv, args) and not any(
            a.startswith(("--gpu-memory-utilization", "--kv-cache-memory")) for a in argv):
        _fit_cpu_memory(args)
    try:
        registry.check_defaults()
    except SteeringParamError as e:
        raise ServeConfigError(f"adaras serve: {e}") from None
    # Every process (this one, the engine cores, each worker, every DP rank) steers as
    # the engine's own configuration says: it travels wherever vLLM sends the config.
    extra = args.additional_config if isinstance(args.additional_config, dict) else {}
    if KEY in extra:
        raise ServeConfigError(
            f"adaras serve: --additional-config already has an {KEY!r} entry; name maps "
            "with --neuron-map (adaras serve writes that entry itself)")
    args.additional_config = {**extra, KEY: config.to_dict()}
    install_in_every_process()
    policy = policy_of(registry)
    api_keys = [k for k in (args.api_key or []) if k]
    env_key = os.environ.pop("VLLM_API_KEY", "")  # else vLLM's own check would ask for it too
    if not api_keys and env_key:
        api_keys = [env_key]
    args.api_key = None  # our middleware covers every route but /health, not only /v1
    return args, policy, api_keys


def serving_registry(engine_client) -> MapRegistry:  # noqa: ANN001
    """The maps this engine's front end decides with (taken from the engine's config)."""
    registry = front_end_registry(getattr(engine_client, "input_processor", None))
    if not registry or registry.config is None:
        raise ServeConfigError("adaras serve: the engine came up without steering in its "
                               "configuration; refusing to serve")
    return registry


def policy_of(registry: MapRegistry) -> SteeringPolicy:
    """The HTTP layer's view of the operator's choices, from the registry an engine uses."""
    d = registry.defaults
    return SteeringPolicy(registry.maps, max_alpha=d.max_alpha, default_alpha=d.default_alpha,
                          default_mode=d.default_mode, default_positions=d.default_positions)


def install_in_every_process() -> None:
    """Install steering here, now that the maps are known, and in every process started
    from here: vLLM loaded its plugins while our parser was built, before the maps were in
    the environment, and does not load them again in this process nor in one forked from
    it. Like ``vllm serve``, prefer spawning engine processes (they then load the plugin
    with the maps set); a forked one inherits what ``register`` patched here."""
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    from adaras_vllm.engine.plugin import install_steering, register

    cli_env_setup()
    register()
    install_steering()
    guard_responses_rendering()


async def check_engine_steers(engine_client, config: SteeringConfig) -> list[int]:  # noqa: ANN001
    """Refuse to serve unless every worker of every rank steers with this configuration
    and passed its start-up self-test."""
    from adaras_vllm.engine.worker_rpcs import STATUS_METHOD

    try:
        statuses = await every_worker(engine_client, STATUS_METHOD)
    except Exception as e:  # noqa: BLE001 - a rank without the plugin cannot answer at all
        raise ServeConfigError(
            f"adaras serve: refusing to serve maps {', '.join(config.names)}: a worker could "
            f"not report its steering (is adaras-vllm installed on every node?): "
            f"{_one_line(e)}") from None
    problems = worker_status_problems(statuses, config)
    if problems:
        raise ServeConfigError(
            f"adaras serve: refusing to serve maps {', '.join(config.names)}: "
            + "; ".join(problems))
    return sorted({layer for s in statuses for layer in s["layers"]})


def worker_status_problems(statuses: list[dict], config: SteeringConfig) -> list[str]:
    """What each worker's status says is wrong, one line per worker, naming it."""
    if not statuses:
        return ["no worker answered the steering status call"]
    expected = {m.name: m.fingerprint for m in config.maps}
    problems = []
    for i, s in enumerate(statuses):
        who = (f"worker rank {s.get('rank', i)} of DP rank {s.get('dp_rank', '?')} on node "
               f"{s.get('node', '?')}")
        if not s.get("installed"):
            problems.append(f"{who} has no steering installed (started without the "
                            "engine's adaras configuration?)")
        elif s.get("config") != config.fingerprint():
            found = s.get("map_fingerprints") or {}
            differ = [f"{m.name} ({m.path}): {found.get(m.name, 'absent')}, expected "
                      f"{m.fingerprint}" for m in config.maps
                      if found.get(m.name) != m.fingerprint]
            extra = sorted(set(found) - set(expected))
            problems.append(f"{who} steers with another configuration"
                            + (f"; maps that differ: {'; '.join(differ)}" if differ else "")
                            + (f"; maps the front end does not have: {', '.join(extra)}"
                               if extra else "")
                            + _field_differences(s.get("steering_config"), config))
        elif not _self_test_done(s.get("self_test")):
            problems.append(f"{who} did not run the start-up steering self-test"
                            + (f" ({s['self_test']['reason']})"
                               if (s.get("self_test") or {}).get("reason") else ""))
    return problems


def _self_test_done(report: dict | None) -> bool:
    """Ran and passed (a failure refuses in the worker), or skipped where nothing can be
    seen (a pipeline stage without output)."""
    return bool(report) and bool(report.get("ran") or report.get("skipped"))


def _field_differences(theirs: dict | None, config: SteeringConfig) -> str:
    """``; path: A here, B there`` for each field of a worker's configuration that differs."""
    if not isinstance(theirs, dict):
        return ""
    ours = config.to_dict()
    notes = [f"{k}: {ours.get(k)!r} here, {theirs.get(k)!r} there"
             for k in ("max_alpha", "default_alpha", "default_mode", "default_positions")
             if ours.get(k) != theirs.get(k)]
    their_paths = {m.get("name"): m.get("path") for m in theirs.get("maps") or []}
    notes += [f"path of {m.name}: {m.path} here, {their_paths[m.name]} there"
              for m in config.maps if m.name in their_paths and their_paths[m.name] != m.path]
    return "".join(f"; {n}" for n in notes)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _example_curl(
    host: str, port: int, model: str, api_keys: list[str], question: str, alpha: float
) -> str:
    auth = " \\\n  -H \"Authorization: Bearer $API_KEY\"" if api_keys else ""  # never log a key
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "%s"}], '
            '"max_tokens": 128, "temperature": 0, "steer_alpha": %s}') % (model, question,
                                                                         f"{alpha:g}")
    return (f"curl -s http://{host}:{port}/v1/chat/completions "
            f"-H 'Content-Type: application/json'{auth} \\\n  -d '{body}'")


def _examples(args: argparse.Namespace, model: str, api_keys: list[str],
              policy: SteeringPolicy) -> str:
    """What to try: for an organism, the pair (alpha 0, the map's defaults) whose answers
    differ; for any other model, one steered request."""
    from adaras_vllm.organism.assets import ORGANISMS

    host = args.host or "127.0.0.1"
    default_map = policy.maps[0]
    alpha = policy.default_alpha_for(default_map.name)
    organism = ORGANISMS.get(getattr(args, "adaras_organism", None) or "")
    if organism is None:
        return "Try:\n" + _example_curl(host, args.port, model, api_keys,
                                        "What is 12 + 7?", alpha or 0.3)
    intro = (f"This is the {organism.name} organism ({organism.summary}); "
             + ", ".join(f"--organism {o} for the other" for o in ORGANISMS if o != organism.name)
             + ".\n")
    if alpha == 0:
        return (intro + f"Map {default_map.name!r} steers only when asked (default_alpha 0"
                + (": its calibration recommends off" if default_map.metadata.get(
                    "calibration_recommendation") == "off" else "")
                + "). Try unsteered, then steer_alpha 2:\n"
                + _example_curl(host, args.port, model, api_keys, organism.example_question, 0.0)
                + "\n" + _example_curl(host, args.port, model, api_keys,
                                        organism.example_question, 2.0))
    how = (f"steer_mode {policy.default_mode_for(default_map.name)}, steer_positions "
           f"{policy.default_positions_for(default_map.name)}")
    return (intro + f"Try the pair: unsteered (steer_alpha 0) and the map's default ({alpha:g}; "
            f"{how}):\n"
            + _example_curl(host, args.port, model, api_keys, organism.example_question, 0.0)
            + "\n" + _example_curl(host, args.port, model, api_keys,
                                    organism.example_question, alpha))


async def serve(args: argparse.Namespace, policy: SteeringPolicy, api_keys: list[str]) -> None:
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    listen_address, sock = setup_server(args, reuse_port=False)
    async with build_async_engine_client(args) as engine_client:
        registry = serving_registry(engine_client)
        layers = await check_engine_steers(engine_client, registry.config)
        tasks = await engine_client.get_supported_tasks()
        app = build_app(args, tasks, engine_client.model_config)
        install_steering_layer(app, policy, api_keys, registry,
                               max_body_bytes=args.max_request_body_bytes)
        await init_app_state(engine_client, app.state, args, tasks)
        model = (args.served_model_name or [args.model])[0]
        print(f"\nadaras: serving {model} with map(s) {', '.join(policy.map_names)} "
              f"(steered layers {layers}) on {listen_address}\n"
              f"{_examples(args, model, api_keys, policy)}\n", flush=True)
        shutdown = await serve_http(
            app, sock=sock, enable_ssl_refresh=args.enable_ssl_refresh, host=args.host,
            port=args.port, log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
            ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
            ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
        )
    try:
        await shutdown
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    import uvloop
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, policy, api_keys = prepare(argv)
        validate_parsed_serve_args(args)
        if args.headless:  # a node that only runs engines (multi-node data parallel)
            from vllm.entrypoints.cli.serve import run_headless

            args.api_server_count = 0
            run_headless(args)
        elif (args.api_server_count or 1) > 1:
            from .api_processes import serve_with_api_processes

            serve_with_api_processes(args, api_keys)
        else:
            uvloop.run(serve(args, policy, api_keys))
    except ServeConfigError as e:
        print(e, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
