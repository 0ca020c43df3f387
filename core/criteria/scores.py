"""Per-weight scores computed one layer at a time.

A criterion's scores are as large as the model (one value per prunable weight); holding them all,
in float32, doubles an fp16 model before the cut even starts. Torch-Pruning and SparseGPT work
layer by layer instead, and so does this mapping: ``scores[name]`` computes that layer's scores
(in float32, whatever the model's dtype) when a granularity asks for them, and nothing is kept
but a three-number summary for the report. A granularity that needs a layer twice asks twice
(the computation is cheap next to the forward passes that produced its statistics).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn


class LayerScores(Mapping):
    """``name -> per-weight scores`` of the prunable layers, computed on access, never stored.

    ``score_layer(name, module) -> tensor`` computes one layer's scores; the result is returned in
    float32 (a no-op for float32 models, so results are those of computing every layer at once).
    ``summary[name]`` holds ``(mean, min, max)`` of every layer computed so far (the report's
    columns); :meth:`summarize_all` fills it before the cut (the scores are read off the weights,
which a cut changes).
    """

    def __init__(self, layers: dict[str, nn.Module], score_layer: Callable[[str, nn.Module], torch.Tensor]):
        self.layers = dict(layers)
        self.score_layer = score_layer
        self.summary: dict[str, tuple[float, float, float]] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        module = self.layers[name]  # KeyError for a layer that is not prunable, as a dict would
        with torch.no_grad():
            score = self.score_layer(name, module)
        score = score.float() if score.dtype != torch.float32 else score
        if name not in self.summary:
            self.summary[name] = (float(score.mean()), float(score.min()), float(score.max()))
        return score

    def __contains__(self, name) -> bool:
        return name in self.layers

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def summarize(self, name: str) -> tuple[float, float, float]:
        if name not in self.summary:
            self[name]
        return self.summary[name]

    def summarize_all(self) -> None:
        """Every layer's summary, taken before a cut changes the weights the scores are read from."""
        for name in self.layers:
            self.summarize(name)


class ConsumerScores(dict):
    """Per-weight scores whose channel importance is counted on the input side only: a channel
    scores the error its removal causes in the layers that read it (OBS-Diff's unit error), not
    the weights of the layer that writes it. ``compensate(model, removed)``, when set, is called
    after the cut with ``removed = {layer name: {"out": [...], "in": [...]}}`` (indices of the
    original shapes) so that the criterion can update the remaining weights."""

    compensate: Callable | None = None


def score_summary(scores, name: str) -> tuple[float, float, float] | None:
    """``(mean, min, max)`` of layer ``name``'s scores for the report, or None when it has none;
    from :class:`LayerScores`' summary, or computed from a plain dict of tensors."""
    if name not in scores:
        return None
    if isinstance(scores, LayerScores):
        return scores.summarize(name)
    score = scores[name]
    return float(score.float().mean()), float(score.min()), float(score.max())


def seeded_layer_scores(layers: dict[str, nn.Module], seed: int, draw: Callable) -> LayerScores:
    """Scores drawn from one generator seeded by ``seed``, layer after layer in sorted-name order
    (``draw(shape, generator) -> tensor``), reproducible in any access order: the generator's
    state before each layer is recorded in one pass (drawing and discarding one layer at a time)
    and restored when that layer is asked for."""
    generator = torch.Generator().manual_seed(int(seed))
    states = {}
    for name, module in sorted(layers.items()):
        states[name] = generator.get_state()
        draw(module.weight.shape, generator)  # advance past this layer; the values are not kept

    def score_layer(name, module):
        local = torch.Generator()
        local.set_state(states[name])
        return draw(module.weight.shape, local).to(module.weight.device)

    return LayerScores(layers, score_layer)
