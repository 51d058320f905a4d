"""The novelty check as a torch module, so that it runs inside the network's graph.

`NoveltyHead` computes what `piston.novelty`'s numpy scorers compute, from the same arrays
(`novelty.npz`), in float32: the torch runtime runs it after the network, and the exporter
puts it into `model.onnx` as the output `novelty` (training/onnx_export.py), so an ONNX
server answers the novelty score from the same forward pass as the logits. On a 0.3 ms ONNX
forward pass the numpy check's dozen small calls per batch cost +10-22% (docs/benchmarks.md);
inside the graph they are a few more nodes of one `run`.

The kNN check stays exact: a product against the whole bank and a `topk`, in float32 (the
bank is stored in float16 and widened and normalised as the numpy scorer does, so both
compare against the same numbers). The channels check reads the graph's input. Imports
torch: only the torch runtime and the exporter use it, never the ONNX path.
"""

from __future__ import annotations

import torch
from torch import nn

from piston.novelty import (
    CHANNEL_STRIDE,
    FLAT,
    ChannelScorer,
    CombinedScorer,
    KnnScorer,
    MahalanobisScorer,
    PartScorer,
    Scorer,
)


class MahalanobisHead(nn.Module):
    """`MahalanobisScorer.score`: the smallest whitened distance to a class mean."""

    def __init__(self, scorer: MahalanobisScorer) -> None:
        super().__init__()
        self.whiten = nn.Buffer(torch.from_numpy(scorer.whiten.copy()))
        self.centres_t = nn.Buffer(torch.from_numpy(scorer.centres.T.copy()))
        self.centre_norms = nn.Buffer(torch.from_numpy(scorer.centre_norms.copy()))

    def forward(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        z = features @ self.whiten
        d2 = (z * z).sum(1, keepdim=True) - 2.0 * (z @ self.centres_t) + self.centre_norms
        return torch.sqrt(torch.clamp(d2.min(1).values, min=0.0))


class KnnHead(nn.Module):
    """`KnnScorer.score`: one minus the mean cosine similarity to the `k` nearest of the bank."""

    def __init__(self, scorer: KnnScorer) -> None:
        super().__init__()
        self.bank_t = nn.Buffer(torch.from_numpy(scorer.bank.T.copy()))  # float32 unit rows
        self.k = scorer.k

    def forward(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        norms = torch.clamp(torch.linalg.vector_norm(features, dim=1, keepdim=True), min=1e-12)
        sim = (features / norms) @ self.bank_t
        return 1.0 - torch.topk(sim, self.k, dim=1).values.mean(1)


class ChannelHead(nn.Module):
    """`ChannelScorer.score`: one minus the mean correlation of the input's colour channels,
    in as few nodes as its formula allows."""

    def forward(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs[:, :, ::CHANNEL_STRIDE, ::CHANNEL_STRIDE]
        c = x - x.mean((2, 3), keepdim=True)
        spread = torch.sqrt((c * c).mean((2, 3), keepdim=True))
        total = (c / torch.clamp(spread, min=FLAT)).sum(1)
        return (9.0 - (total * total).mean((1, 2))) / 6.0


def part_head(scorer: PartScorer) -> nn.Module:
    if isinstance(scorer, MahalanobisScorer):
        return MahalanobisHead(scorer)
    if isinstance(scorer, ChannelScorer):
        return ChannelHead()
    return KnnHead(scorer)


class NoveltyHead(nn.Module):
    """Head features (N, D) and the model's inputs (N, 3, H, W) -> the bundle's novelty score
    (N,), as `Scorer.score` gives it: for a combined check the largest of its checks' scores
    each divided by its threshold, for a single check (older bundles) its raw score."""

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        combined = isinstance(scorer, CombinedScorer)
        parts: list[PartScorer] = (list(scorer.parts) if isinstance(scorer, CombinedScorer)
                                   else [scorer])
        self.parts = nn.ModuleList(part_head(p) for p in parts)
        # divided as the numpy scorer divides (by the float32 threshold), not multiplied
        self.divisors = [max(p.threshold, 1e-12) if combined else 1.0 for p in parts]

    def forward(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        scores = [part(features, inputs) / divisor
                  for part, divisor in zip(self.parts, self.divisors, strict=True)]
        score = scores[0]
        for other in scores[1:]:
            score = torch.maximum(score, other)
        return score


class Scored(nn.Module):
    """A net whose outputs start with (logits, features), with the novelty score appended:
    what is exported as `model.onnx` when the bundle has a novelty check."""

    def __init__(self, net: nn.Module, head: NoveltyHead) -> None:
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = tuple(self.net(x))
        return (*outputs, self.head(outputs[1], x))
