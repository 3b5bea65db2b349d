"""Per-trace mean activations of every MLP neuron, computed inside a vLLM engine.

The engine side is capture mode (``adaras_vllm.engine.capture``): each request's prompt
tokens are summed per layer on the device while vLLM batches and chunks prefills as usual.
Here we start such an engine, feed it token ids in chunks (one generated token each; the
sampled token is never forwarded), and collect the sums through ``collective_rpc``; tensor
parallel ranks each return their columns, joined here in rank order.

The engine runs eager by default. ``compiled=True`` runs vLLM's torch.compile instead
(the capture buffers are static tensors read by reference and mutated in place, which the
compiled graph honours; tested equal to the HF reference on CPU), with CUDA graphs off:
capture steps are prefills, where CUDA graphs save little, and the in-graph accumulation
has not been run under CUDA-graph replay.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from adaras_vllm.engine.capture import (
    CAPTURE_ENV,
    CAPTURE_KEY,
    FETCH_METHOD,
    TOKEN_FEATURES_ENV,
    CaptureResult,
)


class ActivationCapture:
    """A vLLM engine in capture mode. Use as a context manager; ``means`` does the work."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int | None = None,
        tensor_parallel_size: int = 1,
        compiled: bool = False,
        token_features: tuple[Sequence[int], Sequence[int]] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        """``token_features``: (layers, neurons) to also keep per token, in that order."""
        import json
        import tempfile

        from vllm import LLM

        from adaras_vllm.engine.plugin import register

        saved = {k: os.environ.get(k)
                 for k in (CAPTURE_ENV, "ADARAS_NEURON_MAPS", TOKEN_FEATURES_ENV)}
        os.environ[CAPTURE_ENV] = "1"
        os.environ.pop("ADARAS_NEURON_MAPS", None)  # capture the unsteered model
        os.environ.pop(TOKEN_FEATURES_ENV, None)
        self.num_token_features = 0
        if token_features is not None:
            layers, neurons = ([int(v) for v in token_features[0]],
                               [int(v) for v in token_features[1]])
            spec = tempfile.NamedTemporaryFile("w", suffix=".json", prefix="adaras-features-",
                                               delete=False)
            with spec:
                json.dump({"layers": layers, "neurons": neurons}, spec)
            self._spec_path = spec.name
            os.environ[TOKEN_FEATURES_ENV] = spec.name
            self.num_token_features = len(layers)
        try:
            register()  # this process too: a forked engine inherits the patches
            kwargs: dict[str, Any] = dict(
                dtype=dtype,
                enforce_eager=not compiled,
                enable_prefix_caching=False,  # cached tokens would never be captured
                max_num_seqs=max_num_seqs,
                tensor_parallel_size=tensor_parallel_size,
            )
            if compiled:
                kwargs["compilation_config"] = {"cudagraph_mode": "NONE"}
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            if max_num_batched_tokens is not None:
                kwargs["max_num_batched_tokens"] = max_num_batched_tokens
                kwargs.setdefault("enable_chunked_prefill", True)
            kwargs.update(engine_kwargs)
            self.llm = LLM(model, **kwargs)
        finally:
            for k, v in saved.items():  # later engines in this process stay plain
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.tokenizer = self.llm.get_tokenizer()
        cfg = self.llm.llm_engine.model_config
        self.max_model_len = int(cfg.max_model_len)
        self.hf_text_config = cfg.hf_text_config
        self.shape = (
            int(self.hf_text_config.num_hidden_layers),
            int(self.hf_text_config.intermediate_size),
        )
        self.chunk = 4 * max_num_seqs

    def __enter__(self) -> "ActivationCapture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        spec = getattr(self, "_spec_path", None)
        if spec is not None:
            with contextlib.suppress(OSError):
                os.unlink(spec)
            self._spec_path = None
        llm = getattr(self, "llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            self.llm = None

    def encode(self, text: str) -> list[int]:
        """Token ids of a capture text, cut to what the engine accepts (prompt + 1 token)."""
        ids = self.tokenizer.encode(text)
        return list(ids[: self.max_model_len - 1])

    def means(
        self,
        prompts: Sequence[Sequence[int]],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(i, mean)`` for every prompt, ``mean`` being ``[layers, intermediate]``.

        Prompts go to the engine ``self.chunk`` at a time, so host memory holds at most one
        chunk of results. ``progress(n)`` is called with the number of prompts finished.
        """
        for i, mean, _ in self.features(prompts, progress):
            yield i, mean

    def features(
        self,
        prompts: Sequence[Sequence[int]],
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Like ``means``, plus each prompt's ``[len, N]`` per-token features when the
        engine was started with ``token_features`` (else None)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        for start in range(0, len(prompts), self.chunk):
            part = prompts[start : start + self.chunk]
            requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in part]
            params = [
                SamplingParams(max_tokens=1, temperature=0.0,
                               extra_args={CAPTURE_KEY: str(start + j)})
                for j in range(len(part))
            ]
            self.llm.generate(requests, params, use_tqdm=False)
            shards = [
                {k: CaptureResult.from_wire(v) for k, v in rank.items()}
                for rank in self.llm.collective_rpc(FETCH_METHOD)
            ]
            for j in range(len(part)):
                key = str(start + j)
                pieces = [rank.get(key) for rank in shards]
                if any(p is None for p in pieces):
                    raise RuntimeError(f"adaras capture: no activations came back for prompt {key}")
                if not all(p.complete for p in pieces):
                    raise RuntimeError(
                        f"adaras capture: prompt {key} was only partly captured "
                        f"({pieces[0].tokens} of {pieces[0].prompt_len} tokens); is prefix "
                        "caching on?"
                    )
                sums = np.concatenate([p.sums for p in pieces], axis=-1)
                per_token = None
                if self.num_token_features:
                    per_token = np.zeros((pieces[0].prompt_len, self.num_token_features),
                                         np.float32)
                    for piece in pieces:  # each rank holds the features of its shard
                        per_token[:, piece.feature_index] = piece.token_features
                yield start + j, sums / max(pieces[0].tokens, 1), per_token
            if progress is not None:
                progress(len(part))
