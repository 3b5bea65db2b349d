"""Shared fixtures: tiny local models and maps, and helpers to run real vLLM engines.

Engines are expensive on CPU (20-60 s to start), so each test module shares one.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "reference" / "adaras-paper"
CACHE = Path(os.environ.get("ADARAS_TEST_CACHE", REPO / ".cache" / "tests"))
ENV_VAR = "ADARAS_NEURON_MAPS"

# Two maps per model: they overlap in layer 2, so one layer table merges both.
MAP_LAYERS = {"alpha_map": ([1, 2], 11), "beta_map": ([2, 3], 22)}

PROMPTS = [
    "Question: what is 12 + 7? Thinking:",
    "the answer is",
    "Question: what is 45 + 38? Thinking: first add the tens then add the ones. "
    "Question: what is 60 + 21? Thinking: we get the total because therefore wait let me "
    "verify the result number and check it again so the answer is boxed",
    "Question: what is 9 + 9?",
]


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Hold the test cache while building into it: the suite runs in two pytest-xdist
    workers, and a half-written model must never be read by the other one."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# `make test` runs the suite in two pytest-xdist workers, a test file at a time
# (`--dist loadfile`: a module's engine is started once, in one worker).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

# The slowest files first (from `make test`'s --durations), so that the last file to
# start is a short one and neither worker idles at the end.
SLOWEST_FIRST = (
    "test_readme_commands.py", "test_gate_training.py", "test_engine_archs.py",
    "test_serve_default.py", "test_gate_engine.py", "test_capture.py",
    "test_code_pipeline.py", "test_engine_qwen3.py", "test_reliability_quick.py",
    "test_map_build.py", "test_organism_pipeline.py", "test_server.py",
)


def _bind_engines_to_this_workers_core() -> None:
    """vLLM's CPU worker binds its OpenMP threads to the same core in every engine
    ("auto"); engines of two test workers would then share one core and leave the other
    idle. Give each test worker's engines their own core (unless the user chose)."""
    cores = sorted(os.sched_getaffinity(0))
    if not XDIST_WORKER or "VLLM_CPU_OMP_THREADS_BIND" in os.environ or len(cores) < 2:
        return
    index = int(XDIST_WORKER.removeprefix("gw") or 0)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[-1 - index % len(cores)])


_bind_engines_to_this_workers_core()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps
    # each file's own order, which groups its parametrized engines


def tiny_model(arch: str) -> tuple[Path, dict[str, Path]]:
    """A random tiny model of ``arch`` and two random maps for it (built once, cached)."""
    from adaras_vllm.tiny_model import build_tiny_model, random_neuron_map

    with cache_lock():
        model_dir = build_tiny_model(CACHE / f"tiny-{arch}", arch)
        maps = {}
        for name, (layers, seed) in MAP_LAYERS.items():
            path = CACHE / f"tiny-{arch}-{name}.safetensors"
            if not path.is_file():
                random_neuron_map(model_dir, name, layers=layers, per_layer=16,
                                  seed=seed).save(path)
            maps[name] = path
    return model_dir, maps


def map_spec(maps: dict[str, Path]) -> str:
    return ",".join(f"{name}={path}" for name, path in maps.items())


def engine_kwargs(eager: bool, **overrides) -> dict:
    """Engine settings of the oracle tests. ``ADARAS_TEST_EAGER=1`` forces eager everywhere
    and ``ADARAS_TEST_ASYNC_SCHEDULING=1`` turns on async scheduling (``make gpu-check``
    runs the same tests both ways on CUDA)."""
    if os.environ.get("ADARAS_TEST_EAGER") == "1":
        eager = True
    if os.environ.get("ADARAS_TEST_ASYNC_SCHEDULING") == "1":
        overrides.setdefault("async_scheduling", True)
    kw = dict(
        dtype="float32",
        enforce_eager=eager,
        seed=0,
        max_model_len=1024,
        max_num_seqs=16,
        kv_cache_memory_bytes=256 << 20,
    )
    kw.update(overrides)
    return kw


def start_llm(model_dir: Path, maps: dict[str, Path], eager: bool, **overrides):
    """A real offline vLLM engine with the plugin serving ``maps``."""
    os.environ[ENV_VAR] = map_spec(maps)
    from vllm import LLM

    return LLM(str(model_dir), **engine_kwargs(eager, **overrides))


@contextlib.contextmanager
def two_ranks_bound() -> Iterator[None]:
    """TP=2 on this CPU needs one OpenMP core per rank ("0|1"); restored afterwards."""
    saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved


def stop_llm(llm) -> None:  # noqa: ANN001
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


def greedy(llm, requests: list[tuple[list[int], dict]], max_tokens: int = 32, logprobs=None):  # noqa: ANN001, ANN201
    """Run (prompt ids, extra_args) requests in one batch; returns the RequestOutputs."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids, _ in requests]
    params = [
        SamplingParams(
            max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=logprobs,
            extra_args=dict(extra) if extra else None,
        )
        for _, extra in requests
    ]
    return llm.generate(prompts, params, use_tqdm=False)


def tokens(outputs) -> list[list[int]]:  # noqa: ANN001
    return [list(o.outputs[0].token_ids) for o in outputs]


def encode_prompts(model_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return [tok.encode(p) for p in PROMPTS]


def run_engine_job(job: dict, env: dict[str, str]) -> dict:
    """Run ``tests/engine_job.py`` in a fresh process (e.g. with the plugin absent)."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("engine_job.py"))],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"engine job failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ADARAS_RESULT ")]
    if not lines:
        raise RuntimeError(f"engine job printed no result:\n{proc.stdout[-4000:]}")
    return json.loads(lines[-1].removeprefix("ADARAS_RESULT "))


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """Each test leaves the process environment as it found it: ``adaras serve``'s
    ``prepare`` sets the default alpha and mode for engines it starts, and a later module's
    engine (in the same pytest worker) must not inherit them."""
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture(scope="session")
def qwen3_tiny() -> tuple[Path, dict[str, Path]]:
    return tiny_model("qwen3")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A real HTTP server process on a free loopback port, stopped on exit."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, port: int) -> None:
        self.cmd, self.env, self.log, self.port = cmd, env, log, port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "RunningServer":
        import time

        import httpx

        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n"
                                   f"{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"server not healthy in time:\n{self.log.read_text()[-4000:]}")
            time.sleep(1)

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
