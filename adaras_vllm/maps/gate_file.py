"""The correctness gate's file form: a small classifier over a prompt's MLP activations.

AdaRAS steers only the requests the model is predicted to get wrong. The gate reads the
``down_proj`` inputs at ``N`` chosen (layer, neuron) features for every prompt token but
the last, and scores them as the paper's ``AttentionClassifier`` does::

    s_t = tanh(v . x_t + b)          a = softmax_t(s)          z = sum_t a_t x_t
    logit = W2 relu(W1 z + b1) + b2  p_good = sigmoid(logit)   steer iff p_good < threshold

It lives inside the map file (optional ``gate.*`` tensors and ``gate_*`` metadata), so a
map and the gate trained for it travel together. Like the map, this module imports no
engine: tools that train or inspect gates must not need vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

#: What the gate reads: every prompt position but the last.
GATE_INPUT = "prompt[:-1]"

#: Tensor name -> (dtype, rank) of the fixed gate layout.
GATE_TENSORS: dict[str, tuple[torch.dtype, int]] = {
    "gate.features.layers": (torch.int64, 1),
    "gate.features.neurons": (torch.int64, 1),
    "gate.scorer.weight": (torch.float32, 2),
    "gate.scorer.bias": (torch.float32, 1),
    "gate.mlp.0.weight": (torch.float32, 2),
    "gate.mlp.0.bias": (torch.float32, 1),
    "gate.mlp.2.weight": (torch.float32, 2),
    "gate.mlp.2.bias": (torch.float32, 1),
}

#: Metadata keys a gate must carry; other ``gate_*`` keys are provenance (kept as given).
GATE_REQUIRED_METADATA = ("gate_threshold", "gate_input")


class GateFormatError(ValueError):
    """A gate (tensors or metadata) breaks the fixed gate layout."""


@dataclass
class CorrectnessGate:
    """A validated gate. ``layers``/``neurons`` give the classifier's input order."""

    layers: torch.Tensor  # int64 [N]
    neurons: torch.Tensor  # int64 [N]
    scorer_weight: torch.Tensor  # f32 [1, N]
    scorer_bias: torch.Tensor  # f32 [1]
    mlp0_weight: torch.Tensor  # f32 [H, N]
    mlp0_bias: torch.Tensor  # f32 [H]
    mlp2_weight: torch.Tensor  # f32 [1, H]
    mlp2_bias: torch.Tensor  # f32 [1]
    threshold: float
    provenance: dict[str, str] = field(default_factory=dict)  # other gate_* metadata

    @property
    def num_features(self) -> int:
        return int(self.layers.numel())

    @property
    def hidden(self) -> int:
        return int(self.mlp0_bias.numel())

    # ------------------------------------------------------------------------ file form

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "gate.features.layers": self.layers,
            "gate.features.neurons": self.neurons,
            "gate.scorer.weight": self.scorer_weight,
            "gate.scorer.bias": self.scorer_bias,
            "gate.mlp.0.weight": self.mlp0_weight,
            "gate.mlp.0.bias": self.mlp0_bias,
            "gate.mlp.2.weight": self.mlp2_weight,
            "gate.mlp.2.bias": self.mlp2_bias,
        }

    def metadata(self) -> dict[str, str]:
        return {**self.provenance, "gate_threshold": repr(float(self.threshold)),
                "gate_input": GATE_INPUT}

    @classmethod
    def from_parts(
        cls,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        *,
        num_hidden_layers: int,
        intermediate_size: int,
        who: str = "gate",
    ) -> "CorrectnessGate":
        """Validate the fixed layout; every error names the field that is wrong."""
        missing = [n for n in GATE_TENSORS if n not in tensors]
        if missing:
            raise GateFormatError(
                f"{who}: missing tensor(s) {', '.join(missing)}; a gate needs all of "
                f"{', '.join(GATE_TENSORS)}"
            )
        unknown = sorted(set(tensors) - set(GATE_TENSORS))
        if unknown:
            raise GateFormatError(f"{who}: unknown gate tensor(s) {', '.join(unknown[:5])}")
        for name, (dtype, rank) in GATE_TENSORS.items():
            t = tensors[name]
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != rank:
                got = (f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"
                       if isinstance(t, torch.Tensor) else type(t).__name__)
                raise GateFormatError(
                    f"{who}: {name} must be a {rank}-D {str(dtype).removeprefix('torch.')} "
                    f"tensor, got {got}"
                )
            if dtype.is_floating_point and not bool(torch.isfinite(t).all()):
                raise GateFormatError(f"{who}: {name} has non-finite values; they must be finite")
        layers, neurons = tensors["gate.features.layers"], tensors["gate.features.neurons"]
        n = int(layers.numel())
        if n == 0:
            raise GateFormatError(f"{who}: gate.features.layers is empty; a gate needs features")
        hidden = int(tensors["gate.mlp.0.bias"].numel())
        expected = {
            "gate.features.neurons": (n,),
            "gate.scorer.weight": (1, n),
            "gate.scorer.bias": (1,),
            "gate.mlp.0.weight": (hidden, n),
            "gate.mlp.2.weight": (1, hidden),
            "gate.mlp.2.bias": (1,),
        }
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise GateFormatError(
                    f"{who}: {name} has shape {tuple(tensors[name].shape)}; expected {shape} "
                    f"(N={n} features, H={hidden} hidden units)"
                )
        if hidden == 0:
            raise GateFormatError(f"{who}: gate.mlp.0.bias is empty; H must be at least 1")
        for name, values, bound, what in (
            ("gate.features.layers", layers, num_hidden_layers, "num_hidden_layers"),
            ("gate.features.neurons", neurons, intermediate_size, "intermediate_size"),
        ):
            bad = (values < 0) | (values >= bound)
            if bool(bad.any()):
                first = int(values[torch.nonzero(bad)[0]])
                raise GateFormatError(
                    f"{who}: {name} holds {first}, out of range [0, {bound}) ({what}={bound})"
                )
        pairs = layers * intermediate_size + neurons
        if int(torch.unique(pairs).numel()) != n:
            raise GateFormatError(
                f"{who}: gate.features lists a (layer, neuron) pair more than once; each "
                "feature must be distinct"
            )
        for key in GATE_REQUIRED_METADATA:
            if key not in metadata:
                raise GateFormatError(f"{who}: metadata {key} is missing; a gate needs "
                                      f"{' and '.join(GATE_REQUIRED_METADATA)}")
        if metadata["gate_input"] != GATE_INPUT:
            raise GateFormatError(
                f"{who}: metadata gate_input is {metadata['gate_input'][:80]!r}; the only "
                f"supported input is {GATE_INPUT!r}"
            )
        try:
            threshold = float(metadata["gate_threshold"])
        except ValueError:
            threshold = math.nan
        if not 0.0 <= threshold <= 1.0:
            raise GateFormatError(
                f"{who}: metadata gate_threshold is {metadata['gate_threshold'][:80]!r}; "
                "expected a decimal number in [0, 1] (a probability)"
            )
        provenance = {k: v for k, v in metadata.items()
                      if k.startswith("gate_") and k not in GATE_REQUIRED_METADATA}
        return cls(
            layers=layers.contiguous(), neurons=neurons.contiguous(),
            scorer_weight=tensors["gate.scorer.weight"].contiguous(),
            scorer_bias=tensors["gate.scorer.bias"].contiguous(),
            mlp0_weight=tensors["gate.mlp.0.weight"].contiguous(),
            mlp0_bias=tensors["gate.mlp.0.bias"].contiguous(),
            mlp2_weight=tensors["gate.mlp.2.weight"].contiguous(),
            mlp2_bias=tensors["gate.mlp.2.bias"].contiguous(),
            threshold=threshold, provenance=provenance,
        )

    # ---------------------------------------------------------------------- reference

    def score(self, features: torch.Tensor) -> float:
        """p_good for one prompt: ``features`` is ``[T, N]`` (positions 0..P-2, in the
        gate's feature order). An empty prompt prefix pools to z = 0."""
        x = features.to(torch.float64)
        if x.shape[0] == 0:
            z = torch.zeros(self.num_features, dtype=torch.float64)
        else:
            s = torch.tanh(x @ self.scorer_weight.double()[0] + self.scorer_bias.double()[0])
            z = torch.softmax(s, dim=0) @ x
        h = torch.relu(self.mlp0_weight.double() @ z + self.mlp0_bias.double())
        logit = self.mlp2_weight.double()[0] @ h + self.mlp2_bias.double()[0]
        return float(torch.sigmoid(logit))

    def fires(self, p_good: float) -> bool:
        """Steer iff the model is predicted to fail."""
        return p_good < self.threshold


def random_gate(
    num_features: int, hidden: int, *, num_hidden_layers: int, intermediate_size: int,
    threshold: float = 0.5, seed: int = 0, layers: list[int] | None = None, scale: float = 1.0,
) -> CorrectnessGate:
    """A gate with random features and weights: for tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    layer_pool = torch.tensor(layers if layers else list(range(num_hidden_layers)))
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < num_features:
        layer = int(layer_pool[torch.randint(len(layer_pool), (1,), generator=g)])
        pairs.add((layer, int(torch.randint(intermediate_size, (1,), generator=g))))
    chosen = sorted(pairs, key=lambda p: float(torch.rand(1, generator=g)))
    rnd = lambda *shape: scale * torch.randn(*shape, generator=g)  # noqa: E731
    return CorrectnessGate(
        layers=torch.tensor([p[0] for p in chosen], dtype=torch.int64),
        neurons=torch.tensor([p[1] for p in chosen], dtype=torch.int64),
        scorer_weight=rnd(1, num_features), scorer_bias=rnd(1),
        mlp0_weight=rnd(hidden, num_features), mlp0_bias=rnd(hidden),
        mlp2_weight=rnd(1, hidden), mlp2_bias=rnd(1),
        threshold=threshold, provenance={"gate_source": f"random (seed {seed})"},
    )
