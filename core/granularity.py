"""Granularities: turn per-weight scores (``core.criteria``) into masks or structural cuts.

* ``unstructured`` -- per layer, the ``sparsity`` fraction of the lowest-scored weights is zeroed
  (layer-wise, so every prunable layer loses the same fraction and the total is exact).
* ``N:M``          -- in every group of M consecutive input weights (input channels at a fixed
  output channel and kernel position) the N highest-scored weights are kept ("2:4" keeps 2 of 4,
  the pattern of NVIDIA's sparse tensor cores): sparsity 1 - N/M.
* ``channel``      -- Torch-Pruning's ``BasePruner`` removes output channels with their whole
  dependency group; a channel's score is the sum of its group's per-weight scores (local
  pruning per group, as Diff-Pruning). GroupNorm groups are respected through Torch-Pruning's
  channel groups, attention channels are removed evenly per head (``num_heads``), ``conv_out``
  is never pruned, and the diffusers attributes that cache sizes are re-synchronised.
* ``head``         -- whole heads of every multi-head ``Attention`` (q/k/v rows, ``to_out`` columns);
  a head's score is the sum of its weights' scores; ``Attention.heads``/``inner_dim`` are updated.

Masked granularities multiply the mask into the weight, so an exported checkpoint contains the
zeros. Structural ones return a physically smaller UNet.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .criteria import prunable_layers, prunable_parameter_count
from .registry import GRANULARITIES

NM_CHOICES = ("2:4", "4:8")
_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
SPARSITY_TOLERANCE = 0.02  # channel/head: reached parameter sparsity within 2 percentage points


def parse_granularity(text) -> tuple[str, tuple[int, int] | None]:
    """``"channel"`` -> ("channel", None); ``"2:4"`` -> ("N:M", (2, 4)). Raises ValueError."""
    allowed = f"{sorted(n for n in GRANULARITIES if n != 'N:M')} or an N:M pattern such as {list(NM_CHOICES)}"
    if not isinstance(text, str):
        raise ValueError(f"granularity must be one of {allowed}, got {text!r}")
    match = _NM_PATTERN.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(f"granularity {text!r}: N:M needs 0 < N < M (for example {list(NM_CHOICES)}), got N={n}, M={m}")
        return "N:M", (n, m)
    if text in GRANULARITIES and text != "N:M":
        return text, None
    raise ValueError(f"granularity must be one of {allowed}, got {text!r}")


def attention_modules(unet: nn.Module) -> dict:
    """Name -> attention module of ``unet`` (the adapter's definition)."""
    from .criteria import _rules

    adapter, component = _rules(unet)
    return adapter.attention_modules(component, unet)


def sync_diffusers_attributes(unet: nn.Module, adapter=None, component: str | None = None) -> None:
    """After a structural cut: the family's fix-ups (cached sizes made consistent with the weights)."""
    from .criteria import _rules

    adapter, component = _rules(unet, adapter, component)
    adapter.fix_up(component, unet)


def plain_diffusers_config(unet: nn.Module, base_config: dict, adapter=None, component: str | None = None) -> dict | None:
    """The diffusers config that rebuilds exactly these shapes, or None when none exists."""
    from .criteria import _rules

    adapter, component = _rules(unet, adapter, component)
    return adapter.plain_config(component, unet, base_config)


# ----------------------------------------------------------------------------------------------
# Outcomes and the registry
# ----------------------------------------------------------------------------------------------
@dataclass
class GranularityOutcome:
    """What a granularity did: the (pruned) UNet and what the report needs."""

    unet: nn.Module
    importance: dict = field(default_factory=dict)  # layer -> np.ndarray (per channel / head / weight block)
    structural_ratio: float | None = None
    units_before: dict = field(default_factory=dict)  # layer -> number of units (channels, heads)
    units_after: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Granularity:
    """A registered granularity. ``apply(unet, scores, spec, progress) -> GranularityOutcome``;
    ``check(unet, spec)`` raises ValueError before any calibration when the model cannot take it."""

    name: str
    apply: Callable
    check: Callable
    structural: bool
    description: str = ""


def _block_importance(score: torch.Tensor) -> np.ndarray:
    """Per weight-block importance for heatmaps: output x input channel (kernel summed)."""
    return score.reshape(score.shape[0], score.shape[1], -1).sum(-1).float().cpu().numpy()


def _no_check(unet, spec):
    return None


def apply_unstructured(unet, scores, spec, progress=None):
    outcome = GranularityOutcome(unet=unet)
    for name, module in prunable_layers(unet).items():
        score = scores[name]
        count = int(round(spec.sparsity * score.numel()))
        mask = torch.ones(score.numel(), dtype=module.weight.dtype, device=module.weight.device)
        if count:
            order = torch.argsort(score.flatten().float().cpu(), stable=True)[:count]
            mask[order.to(mask.device)] = 0
        with torch.no_grad():
            module.weight.mul_(mask.view_as(module.weight))
        outcome.importance[name] = _block_importance(score)
    return outcome


def _nm_view(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """(out, in, kh, kw) -> (out*kh*kw*in/m, m): groups of m consecutive input channels."""
    if tensor.dim() == 4:
        tensor = tensor.permute(0, 2, 3, 1)
    return tensor.reshape(-1, m)


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The one N:M layout helper: a bool mask of ``scores``' shape keeping the ``n`` highest-scored
    of every ``m`` consecutive input weights (conv: input channels at a fixed output channel and
    kernel position, the ``(out, kh, kw, in)`` order of OBS's weight matrix). Ties are broken by
    position, so the mask is deterministic."""
    groups = _nm_view(scores.float(), m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order, True)
    if scores.dim() == 4:
        out, inp, kh, kw = scores.shape
        return keep.reshape(out, kh, kw, inp).permute(0, 3, 1, 2)
    return keep.reshape(scores.shape)


def check_nm(unet, spec):
    n, m = spec.nm_pattern
    for name, module in prunable_layers(unet).items():
        width = module.weight.shape[1]
        if width % m:
            raise ValueError(
                f"granularity {spec.granularity!r} needs the input width of every prunable layer divisible by M={m}; "
                f"layer {name!r} has {width} input channels"
            )


def apply_nm(unet, scores, spec, progress=None):
    n, m = spec.nm_pattern
    check_nm(unet, spec)
    outcome = GranularityOutcome(unet=unet)
    for name, module in prunable_layers(unet).items():
        score = scores[name]
        mask = nm_keep_mask(score, n, m)
        with torch.no_grad():
            module.weight.mul_(mask.to(module.weight.dtype).to(module.weight.device))
        outcome.importance[name] = _block_importance(score)
    return outcome


# ---------------------------------------------------------------------------- channel
class ConsumerScores(dict):
    """Per-weight scores whose channel importance is counted on the input side only: a channel
    scores the error its removal causes in the layers that read it (OBS-Diff's unit error), not
    the weights of the layer that writes it. ``compensate(unet, removed)``, when set, is called
    after the cut with ``removed = {layer name: {"out": [...], "in": [...]}}`` (indices of the
    original shapes) so that the criterion can update the remaining weights."""

    compensate: Callable | None = None


class WeightScoreImportance:
    """Torch-Pruning importance fed by per-weight scores: a channel's score is the sum, over its
    dependency group, of the scores of the conv/linear weights it owns (output rows or input
    columns). Modules without prunable weights (norms, conv_in, conv_out) contribute nothing."""

    def __init__(self, scores_by_module: dict, input_side_only: bool = False):
        self.scores_by_module = scores_by_module  # module -> per-weight score tensor
        self.input_side_only = input_side_only  # ConsumerScores: output rows contribute nothing

    @torch.no_grad()
    def __call__(self, group):
        import torch_pruning as tp

        total = None
        for index, (dep, idxs) in enumerate(group):
            layer, prune_fn = dep.layer, dep.pruning_fn
            score = self.scores_by_module.get(layer)
            if score is None:
                continue
            root_idxs = group[index].root_idxs
            if any(r is None for r in root_idxs):
                continue
            if prune_fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                if self.input_side_only:
                    continue
                local = score.flatten(1).sum(1)[idxs]
            elif prune_fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                local = score.transpose(0, 1).flatten(1).sum(1)[idxs]
            else:
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            total.scatter_add_(0, torch.tensor(root_idxs, dtype=torch.long), local.double().cpu())
        if total is None:
            return None
        return total.float()


def example_inputs(unet, adapter=None, component: str | None = None) -> dict:
    """Keyword inputs of one forward pass (batch 1), from the family's adapter."""
    from .criteria import _rules

    adapter, component = _rules(unet, adapter, component)
    return adapter.example_inputs(component, unet)


class ChannelPlanner:
    """One Torch-Pruning dependency graph, many candidate ratios.

    Building the graph traces the UNet (the slow part), so it is built once; for a candidate
    ``pruning_ratio`` the planner asks the pruner for its groups without pruning them and counts
    the prunable parameters that would remain, exactly: a layer keeps
    ``(out - removed_out) * (in - removed_in) * kernel`` weights.
    """

    def __init__(self, unet, scores_by_name: dict, adapter=None, component: str | None = None):
        import torch_pruning as tp

        from .criteria import _rules

        self.adapter, self.component = _rules(unet, adapter, component)
        self.unet = unet
        for parameter in unet.parameters():  # the graph is traced through autograd
            parameter.requires_grad_(True)
        modules = dict(unet.named_modules())
        self.prunable = {modules[name]: name for name in prunable_layers(unet, self.adapter, self.component)}
        num_heads = {}
        for group in self.adapter.head_groups(self.component, unet).values():
            for linear in group.rows.values():
                if group.heads > 1:
                    num_heads[linear] = group.heads
        kept = [modules[name] for name in self.adapter.channel_kept_layers(self.component, unet) if name in modules]
        groups = {modules[name]: count for name, count in self.adapter.channel_groups(self.component, unet).items()}
        self.pruner = tp.pruner.BasePruner(
            unet,
            self.adapter.example_inputs(self.component, unet),
            importance=WeightScoreImportance({modules[n]: s for n, s in scores_by_name.items()},
                                             input_side_only=isinstance(scores_by_name, ConsumerScores)),
            pruning_ratio=0.0,  # set per call: local, every group loses the same fraction (Diff-Pruning)
            ignored_layers=kept,  # the image/latent interface (conv_out ...) is never cut (METHODS.md)
            out_channel_groups=groups,  # outputs cut evenly per group (scale/shift halves, adapter)
            num_heads=num_heads,  # attention channels removed evenly per head; heads are kept
            prune_num_heads=False,
            prune_head_dims=True,
        )
        self.before = sum(m.weight.numel() for m in self.prunable)
        # Root module of every group, smallest first: the order in which groups get the next
        # ratio step when one uniform ratio cannot reach the parameter target (see ``search``).
        roots = []
        for group in self.pruner.DG.get_all_groups(ignored_layers=self.pruner.ignored_layers,
                                                   root_module_types=self.pruner.root_module_types):
            module = group[0].dep.target.module
            if module not in roots:
                roots.append(module)
        self.roots = sorted(roots, key=lambda m: (m.weight.shape[0], roots.index(m)))

    def _groups(self, ratio: float, boost: tuple[float, int] | None = None):
        """Torch-Pruning's groups at ``ratio``; ``boost = (higher_ratio, k)`` gives the k smallest
        groups their own scope at the higher ratio (still local pruning inside each group)."""
        pruner = self.pruner
        pruner.reset()
        pruner.pruning_ratio = ratio
        pruner.per_step_pruning_ratio = pruner.iterative_pruning_ratio_scheduler(ratio, 1)
        pruner._layer_to_scope.clear()
        pruner.pruning_ratio_dict.clear()
        if boost is not None:
            higher, count = boost
            for index, module in enumerate(self.roots[:count]):
                pruner._layer_to_scope[module] = (f"_diffprune_boost_{index}", [module])
                pruner.pruning_ratio_dict[module] = pruner.iterative_pruning_ratio_scheduler(higher, 1)
        return pruner.step(interactive=True)

    def plan(self, ratio: float, boost=None) -> dict:
        """module -> {"out": removed output indices, "in": removed input indices}."""
        removal: dict = {}
        for group in self._groups(ratio, boost) or []:
            for dep, idxs in group:
                fn = self.pruner.DG.is_out_channel_pruning_fn(dep.handler)
                entry = removal.setdefault(dep.target.module, {"out": set(), "in": set()})
                entry["out" if fn else "in"].update(int(i) for i in idxs)
        return removal

    def sparsity(self, ratio: float, boost=None) -> float:
        """Prunable-parameter sparsity at ``ratio``; inf when a layer would lose all its channels."""
        removal = self.plan(ratio, boost)
        remaining = 0
        for module, name in self.prunable.items():
            entry = removal.get(module, {"out": set(), "in": set()})
            out = module.weight.shape[0] - len(entry["out"])
            inp = module.weight.shape[1] - len(entry["in"])
            if out <= 0 or inp <= 0:
                return math.inf
            remaining += out * inp * int(np.prod(module.weight.shape[2:]))
        for module, entry in removal.items():
            if isinstance(module, nn.GroupNorm) and (module.num_channels - len(entry["out"]) < module.num_groups
                                                     or (module.num_channels - len(entry["out"])) % module.num_groups):
                return math.inf  # GroupNorm needs a channel count divisible by its groups
            if isinstance(module, (nn.Conv2d, nn.Linear)) and (
                module.weight.shape[0] <= len(entry["out"]) or module.weight.shape[1] <= len(entry["in"])
            ):
                return math.inf
        return 1.0 - remaining / self.before

    def prune(self, ratio: float, boost=None) -> None:
        if not math.isfinite(self.sparsity(ratio, boost)):
            raise ValueError(
                f"channel_ratio {ratio:g} would remove all channels of a layer of this model; use a smaller ratio or sparsity"
            )
        for group in self._groups(ratio, boost) or []:
            group.prune()
        self.adapter.fix_up(self.component, self.unet)

    def search(self, target: float, upper: float, progress=None):
        """Reach ``target`` prunable-parameter sparsity: bisect the uniform ratio; if its steps are
        too coarse (narrow GroupNorm groups make them jump), give the k smallest groups the next
        ratio step and bisect k. Returns (ratio, boost, reached)."""
        trials = [0]

        def report(message):
            trials[0] += 1
            if progress is not None:
                progress(min(0.9, trials[0] / 24), message)

        low, high = 0.0, upper
        best = (0.0, None, 0.0)
        for _ in range(14):
            middle = (low + high) / 2
            report(f"pruning: searching channel ratio ({middle:.4f})")
            reached = self.sparsity(middle)
            if math.isfinite(reached) and abs(reached - target) < abs(best[2] - target):
                best = (middle, None, reached)
            if abs(reached - target) < 0.005:
                return best
            if reached > target:
                high = middle
            else:
                low = middle
        if not math.isfinite(self.sparsity(high)):
            return best
        first, last = 0, len(self.roots)
        while first <= last:
            count = (first + last) // 2
            report(f"pruning: ratio {low:.4f}, {count} groups at {high:.4f}")
            reached = self.sparsity(low, (high, count))
            if math.isfinite(reached) and abs(reached - target) < abs(best[2] - target):
                best = (low, (high, count), reached)
            if abs(reached - target) < 0.005:
                break
            if reached > target:
                last = count - 1
            else:
                first = count + 1
        return best


def max_channel_ratio(unet) -> float:
    """The largest ratio that leaves every channel group (GroupNorm group, attention head,
    layer) at least one channel: Torch-Pruning keeps ``int(width * (1 - ratio))`` per group."""
    widths = [m.num_channels // m.num_groups for m in unet.modules() if isinstance(m, nn.GroupNorm)]
    widths += [group.head_dim for group in _head_groups(unet).values()]
    widths += [m.weight.shape[0] for m in prunable_layers(unet).values()]
    return 1.0 - 1.0 / min(widths)


def apply_channel(unet, scores, spec, progress=None):
    limit = max_channel_ratio(unet)
    if spec.channel_ratio is not None and spec.channel_ratio >= limit:
        raise ValueError(
            f"channel_ratio {spec.channel_ratio:g} would remove all channels of a layer or group of this model "
            f"(its narrowest group has {round(1 / (1 - limit))} channels); allowed: channel_ratio < {limit:.3f}"
        )
    units_before = {name: int(m.weight.shape[0]) for name, m in prunable_layers(unet).items()}
    importance = {name: s.flatten(1).sum(1).float().cpu().numpy() for name, s in scores.items()}
    outcome = GranularityOutcome(unet=unet, importance=importance, units_before=units_before)
    if spec.channel_ratio is None and spec.sparsity == 0:
        outcome.structural_ratio = 0.0
    else:
        if progress is not None:
            progress(0.0, "pruning: building the dependency graph")
        planner = ChannelPlanner(unet, scores)
        boost = None
        if spec.channel_ratio is not None:
            ratio = spec.channel_ratio
        else:
            ratio, boost, reached = planner.search(spec.sparsity, limit, progress)
            if abs(reached - spec.sparsity) > SPARSITY_TOLERANCE:
                raise ValueError(
                    f"sparsity {spec.sparsity:g} cannot be reached with granularity 'channel' on this model "
                    f"(closest: {reached:.3f}); allowed: a sparsity reachable within {SPARSITY_TOLERANCE:g}, "
                    "or granularity 'unstructured'"
                )
        if progress is not None:
            progress(0.95, f"pruning: removing channels at ratio {ratio:.4f}")
        if ratio > 0 or boost is not None:
            compensate = getattr(scores, "compensate", None)
            if compensate is not None:  # indices of the original shapes, taken before the cut
                modules = {module: name for name, module in unet.named_modules()}
                removed = {modules[module]: {side: sorted(indices) for side, indices in entry.items()}
                           for module, entry in planner.plan(ratio, boost).items() if module in modules}
            planner.prune(ratio, boost)
            if compensate is not None:
                if progress is not None:
                    progress(0.97, "pruning: compensating the remaining weights")
                compensate(unet, removed)
        outcome.structural_ratio = ratio
        if boost is not None:
            outcome.notes["boosted_groups"] = {"ratio": boost[0], "count": boost[1], "of": len(planner.roots)}
    outcome.units_after = {name: int(m.weight.shape[0]) for name, m in prunable_layers(unet).items()}
    return outcome


# ---------------------------------------------------------------------------- head
def _head_groups(unet) -> dict:
    from .criteria import _rules

    adapter, component = _rules(unet)
    return adapter.head_groups(component, unet)


def _multihead(unet) -> dict:
    return {name: g for name, g in _head_groups(unet).items() if g.heads >= 2 and g.has_key}


def check_head(unet, spec):
    if not _multihead(unet):
        found = {name: g.heads for name, g in _head_groups(unet).items()}
        raise ValueError(
            "granularity 'head' needs a model with multi-head attention (Attention.heads >= 2); "
            f"this model's attention layers have heads {found or 'none'}; allowed granularities: "
            "['unstructured', 'N:M', 'channel']"
        )


def _head_scores(group, scores) -> torch.Tensor:
    """A head's score: the sum of its weights' scores over every producing row and reading column."""
    total = torch.zeros(group.heads, dtype=torch.float64)
    for layer in group.rows:
        total += scores[layer].double().cpu().reshape(group.heads, group.head_dim, -1).sum((1, 2))
    for layer in group.columns:
        score = scores[layer].double().cpu()
        total += score.reshape(score.shape[0], group.heads, group.head_dim).sum((0, 2))
    return total


def _heads_removed(heads: int, ratio: float) -> int:
    return min(heads - 1, int(math.floor(ratio * heads + 1e-9)))


def apply_head(unet, scores, spec, progress=None):
    from .criteria import _rules

    check_head(unet, spec)
    adapter, component = _rules(unet)
    before = prunable_parameter_count(unet)
    groups = _multihead(unet)
    head_scores = {name: _head_scores(group, scores) for name, group in groups.items()}

    def sparsity_at(ratio: float) -> float:
        removed = sum(_heads_removed(g.heads, ratio) * g.weights_per_head for g in groups.values())
        return removed / before

    if spec.channel_ratio is not None:
        ratio = spec.channel_ratio
    else:
        # the reachable sparsities are discrete: try every distinct per-layer head count
        candidates = sorted({0.0} | {k / g.heads for g in groups.values() for k in range(1, g.heads)})
        ratio = min(candidates, key=lambda r: (abs(sparsity_at(r) - spec.sparsity), r))
        if abs(sparsity_at(ratio) - spec.sparsity) > SPARSITY_TOLERANCE:
            maximum = sparsity_at(max(candidates))
            raise ValueError(
                f"sparsity {spec.sparsity:g} cannot be reached with granularity 'head' on this model: removing whole "
                f"attention heads reaches at most {maximum:.3f} of the prunable parameters (closest {sparsity_at(ratio):.3f}); "
                f"allowed: sparsity in [0, {maximum + SPARSITY_TOLERANCE:.3f}] or granularity 'channel'"
            )
    outcome = GranularityOutcome(unet=unet, structural_ratio=ratio)
    for name, group in groups.items():
        outcome.importance[name] = head_scores[name].float().numpy()
        outcome.units_before[name] = group.heads
        removed = _heads_removed(group.heads, ratio)
        if removed:
            order = torch.argsort(head_scores[name], stable=True)
            drop = set(order[:removed].tolist())
            adapter.cut_heads(component, unet, name, [h for h in range(group.heads) if h not in drop])
        outcome.units_after[name] = int(group.module.heads)
    sync_diffusers_attributes(unet)
    return outcome


# GRANULARITIES lives in core.registry (name -> entry; imports nothing of the engine)


def register_granularity(granularity: Granularity) -> Granularity:
    GRANULARITIES[granularity.name] = granularity
    return granularity


for _granularity in (
    Granularity("unstructured", apply_unstructured, _no_check, False, "single weights, layer-wise"),
    Granularity("N:M", apply_nm, check_nm, False, "N of every M consecutive input weights kept (2:4, 4:8)"),
    Granularity("channel", apply_channel, _no_check, True, "output channels with their dependency group (Torch-Pruning)"),
    Granularity("head", apply_head, check_head, True, "whole attention heads"),
):
    register_granularity(_granularity)

# Choice list for the UI: N:M expanded to its supported patterns.
GRANULARITY_CHOICES = ("unstructured", *NM_CHOICES, "channel", "head")
