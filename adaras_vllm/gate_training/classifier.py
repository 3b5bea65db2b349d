"""Training the correctness gate: the paper's attention classifier, its metrics, and the
conversion into the map's fixed gate format.

Features are standardised for training (per-feature mean and standard deviation over the
training tokens) and the standardisation is folded back into the weights afterwards:
``v . (x - mu) / sd = (v / sd) . x - v . mu / sd``, and since the attention weights sum
to one, pooling commutes with it, so ``W1 (z - mu) / sd`` folds into ``mlp.0`` the same
way. The stored gate therefore reads raw ``down_proj`` inputs, as the engine gives them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from adaras_vllm.maps.gate_file import CorrectnessGate


class AttentionClassifier(nn.Module):
    """``s_t = tanh(v.x_t + b)``, ``a = softmax(s)``, ``z = sum a_t x_t``,
    ``logit = W2 relu(W1 z + b1) + b2`` (dropout between, in training only)."""

    def __init__(self, num_features: int, hidden: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.scorer = nn.Linear(num_features, 1)
        # What a prompt with no gate positions (one token) pools to: raw z = 0, as the
        # engine does, which is -mean/std once features are standardised.
        self.register_buffer("empty_z", torch.zeros(num_features))
        self.mlp = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[T, N]`` (one question) -> the logit of "answer is correct"."""
        if x.shape[0] == 0:
            z = self.empty_z
        else:
            a = torch.softmax(torch.tanh(self.scorer(x))[:, 0], dim=0)
            z = a @ x
        return self.mlp(z)[0]


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is absent."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2)
                 / (len(pos) * len(neg)))


def roc_curve(labels: Sequence[int], scores: Sequence[float]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold): "positive" iff score >= t."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y] >= t).mean() if y.any() else 0.0 for t in thresholds])
    fpr = np.array([(s[~y] >= t).mean() if (~y).any() else 0.0 for t in thresholds])
    return fpr, tpr, thresholds


def youden_threshold(labels: Sequence[int], p_good: Sequence[float]) -> float:
    """The threshold maximising TPR - FPR for "good iff p_good >= t" (steer iff below),
    placed midway between neighbouring scores so it does not sit on a sample."""
    fpr, tpr, thresholds = roc_curve(labels, p_good)
    best = int(np.argmax(tpr - fpr))
    t = thresholds[best]
    if not np.isfinite(t):
        return 1.0
    lower = np.asarray(p_good, dtype=np.float64)
    lower = lower[lower < t]
    return float((t + lower.max()) / 2) if len(lower) else float(t)


@dataclass
class TrainConfig:
    hidden: int = 256
    epochs: int = 100
    patience: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-5
    dropout: float = 0.3
    seed: int = 0


@dataclass
class TrainResult:
    model: AttentionClassifier
    mean: torch.Tensor
    std: torch.Tensor
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def _standardise(questions: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.concatenate([q for q in questions if len(q)], axis=0).astype(np.float64)
    mean = rows.mean(0)
    std = rows.std(0)
    std[std < 1e-6] = 1.0
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def predict(model: AttentionClassifier, questions: Sequence[torch.Tensor]) -> list[float]:
    model.eval()
    with torch.no_grad():
        return [float(torch.sigmoid(model(x))) for x in questions]


def train_classifier(
    train_x: Sequence[np.ndarray], train_y: Sequence[int],
    val_x: Sequence[np.ndarray], val_y: Sequence[int],
    config: TrainConfig, progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """The paper's recipe: Adam, BCE with ``pos_weight = #bad / #good``, one question per
    step, early stopping on validation ROC-AUC; the best epoch's weights are kept."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    mean, std = _standardise(train_x)
    tx = [(torch.tensor(x, dtype=torch.float32) - mean) / std for x in train_x]
    vx = [(torch.tensor(x, dtype=torch.float32) - mean) / std for x in val_x]
    model = AttentionClassifier(len(mean), config.hidden, config.dropout)
    model.empty_z.copy_(-mean / std)
    good = sum(train_y)
    bad = len(train_y) - good
    pos_weight = torch.tensor(bad / good if good else 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_auc, best_epoch, best_state, waited = -1.0, 0, None, 0
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total = 0.0
        for i in rng.permutation(len(tx)):
            opt.zero_grad()
            loss = loss_fn(model(tx[i]), torch.tensor(float(train_y[i])))
            loss.backward()
            opt.step()
            total += float(loss.detach())
        val_auc = roc_auc(val_y, predict(model, vx))
        row = {"epoch": epoch, "loss": total / max(len(tx), 1), "val_auc": val_auc}
        history.append(row)
        if progress is not None:
            progress(epoch, row)
        score = -1.0 if np.isnan(val_auc) else val_auc
        if score > best_auc:
            best_auc, best_epoch, waited = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, mean, std, best_epoch, epoch, history)


def fold_into_gate(result: TrainResult, layers: Sequence[int], neurons: Sequence[int],
                   threshold: float, provenance: dict[str, str]) -> CorrectnessGate:
    """The trained classifier as the map's gate, reading raw (unstandardised) features."""
    m = result.model
    mean, std = result.mean.double(), result.std.double()
    v = m.scorer.weight.detach().double()[0]
    w1 = m.mlp[0].weight.detach().double()
    return CorrectnessGate(
        layers=torch.tensor(list(layers), dtype=torch.int64),
        neurons=torch.tensor(list(neurons), dtype=torch.int64),
        scorer_weight=(v / std)[None].float(),
        scorer_bias=(m.scorer.bias.detach().double() - (v * mean / std).sum()).float(),
        mlp0_weight=(w1 / std).float(),
        mlp0_bias=(m.mlp[0].bias.detach().double() - (w1 * (mean / std)).sum(1)).float(),
        mlp2_weight=m.mlp[3].weight.detach().float().clone(),
        mlp2_bias=m.mlp[3].bias.detach().float().clone(),
        threshold=float(threshold),
        provenance=provenance,
    )
