"""``channel``: Torch-Pruning's ``BasePruner`` removes output channels with their whole dependency group;
a channel's score is the sum of its group's per-weight scores (local pruning per group, as
Diff-Pruning). GroupNorm groups are respected through Torch-Pruning's channel groups, attention
channels are removed evenly per head (``num_heads``), the adapter's kept layers (``conv_out``, an
autoencoder's latent interface) are never cut, outputs the adapter groups (scale/shift halves) are cut
evenly, and the adapter's fix-ups re-synchronise the cached sizes."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..criteria import _rules, prunable_layers
from ..criteria.scores import ConsumerScores
from .base import SPARSITY_TOLERANCE, Granularity, GranularityOutcome, _no_check, register_granularity


# The uniform-ratio search stops once its bracket is narrower than this (one step of a channel
# group up to 1,000 wide); the k-smallest-groups search after it refines the rest.
UNIFORM_RATIO_RESOLUTION = 1e-3


@torch.no_grad()
def channel_sums(scores) -> dict:
    """Layer name -> ``(per output channel, per input channel)`` sums of its per-weight scores.

    What a channel's group score needs from each layer, reduced one layer at a time: the
    per-weight scores (as large as the model) are never all resident, and every candidate plan of
    the ratio search reads these two vectors instead of reducing the weights again."""
    sums = {}
    for name in scores:
        score = scores[name]
        sums[name] = (score.flatten(1).sum(1), score.transpose(0, 1).flatten(1).sum(1))
        del score
    return sums


class WeightScoreImportance:
    """Torch-Pruning importance fed by per-weight scores: a channel's score is the sum, over its
    dependency group, of the scores of the conv/linear weights it owns (output rows or input
    columns). Modules without prunable weights (norms, conv_in, conv_out) contribute nothing.
    The scores arrive reduced per layer (:func:`channel_sums`)."""

    def __init__(self, sums_by_module: dict, input_side_only: bool = False):
        self.sums_by_module = sums_by_module  # module -> (per output channel, per input channel) score sums
        self.input_side_only = input_side_only  # ConsumerScores: output rows contribute nothing

    @torch.no_grad()
    def __call__(self, group):
        import torch_pruning as tp

        total = None
        for index, (dep, idxs) in enumerate(group):
            layer, prune_fn = dep.layer, dep.pruning_fn
            sums = self.sums_by_module.get(layer)
            if sums is None:
                continue
            root_idxs = group[index].root_idxs
            if any(r is None for r in root_idxs):
                continue
            if prune_fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
                if self.input_side_only:
                    continue
                local = sums[0][idxs]
            elif prune_fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                local = sums[1][idxs]
            else:
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            total.scatter_add_(0, torch.tensor(root_idxs, dtype=torch.long), local.double().cpu())
        if total is None:
            return None
        return total.float()


class _TracedOp:
    """Stands in for a traced autograd node once the dependency graph is built (not None: a slice
    op with a node is one Torch-Pruning adjusts)."""

    def __init__(self, name: str):
        self._name = name

    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return self._name


def release_traced_graph(graph) -> None:
    """Drop Torch-Pruning's references to the autograd graph of its tracing pass once the
    dependency graph is built (its shapes and index mappings are read by then). That graph holds
    the trace's activations and, through its leaves, every original parameter: kept, it keeps a
    whole copy of the model alive while the cut replaces each weight with a smaller one."""
    for node in graph.module2node.values():
        node.grad_fn = None
        operation = node.module
        for attribute in ("grad_fn", "_grad_fn"):
            traced = getattr(operation, attribute, None)
            if hasattr(traced, "next_functions"):  # an autograd node (Torch-Pruning's slice / element-wise ops)
                setattr(operation, attribute, _TracedOp(traced.name()))


def example_inputs(model, adapter=None, component: str | None = None) -> dict:
    """Keyword inputs of one forward pass (batch 1), from the family's adapter."""
    adapter, component = _rules(model, adapter, component)
    return adapter.example_inputs(component, model)


class ChannelPlanner:
    """One Torch-Pruning dependency graph, many candidate ratios.

    Building the graph traces the UNet (the slow part), so it is built once; for a candidate
    ``pruning_ratio`` the planner asks the pruner for its groups without pruning them and counts
    the prunable parameters that would remain, exactly: a layer keeps
    ``(out - removed_out) * (in - removed_in) * kernel`` weights.
    """

    def __init__(self, model, scores_by_name: dict, adapter=None, component: str | None = None, sums: dict | None = None):
        import torch_pruning as tp

        self.adapter, self.component = _rules(model, adapter, component)
        self.model = model
        for parameter in model.parameters():  # the graph is traced through autograd
            parameter.requires_grad_(True)
        modules = dict(model.named_modules())
        self.prunable = {modules[name]: name for name in prunable_layers(model, self.adapter, self.component)}
        num_heads = {}
        for group in self.adapter.head_groups(self.component, model).values():
            for linear in group.rows.values():
                if group.heads > 1:
                    num_heads[linear] = group.heads
        kept = [modules[name] for name in self.adapter.channel_kept_layers(self.component, model) if name in modules]
        groups = {modules[name]: count for name, count in self.adapter.channel_groups(self.component, model).items()}
        self.pruner = tp.pruner.BasePruner(
            model,
            self.adapter.example_inputs(self.component, model),
            importance=WeightScoreImportance({modules[n]: s for n, s in (sums or channel_sums(scores_by_name)).items()},
                                             input_side_only=isinstance(scores_by_name, ConsumerScores)),
            pruning_ratio=0.0,  # set per call: local, every group loses the same fraction (Diff-Pruning)
            ignored_layers=kept,  # the image/latent interface (conv_out ...) is never cut
            out_channel_groups=groups,  # outputs cut evenly per group (scale/shift halves, adapter)
            num_heads=num_heads,  # attention channels removed evenly per head; heads are kept
            prune_num_heads=False,
            prune_head_dims=True,
        )
        release_traced_graph(self.pruner.DG)
        self.before = sum(m.weight.numel() for m in self.prunable)
        # While the model is unchanged, Torch-Pruning's full-index groups are the same for every
        # candidate ratio (only the chosen indices differ): trace them once, not once per plan.
        # ``prune`` drops this before it changes the model; ``_sparsities`` memoises each plan's count.
        self._full_groups: dict = {}
        self._sparsities: dict = {}
        self.pruner.DG.get_all_groups = self._cached_groups
        # Root module of every group, smallest first: the order in which groups get the next
        # ratio step when one uniform ratio cannot reach the parameter target (see ``search``).
        roots = []
        for group in self.pruner.DG.get_all_groups(ignored_layers=self.pruner.ignored_layers,
                                                   root_module_types=self.pruner.root_module_types):
            module = group[0].dep.target.module
            if module not in roots:
                roots.append(module)
        self.roots = sorted(roots, key=lambda m: (m.weight.shape[0], roots.index(m)))

    def _cached_groups(self, ignored_layers=(), root_module_types=()):
        key = (tuple(id(m) for m in ignored_layers), tuple(root_module_types))
        if key not in self._full_groups:
            graph = type(self.pruner.DG)
            self._full_groups[key] = list(graph.get_all_groups(self.pruner.DG, ignored_layers=list(ignored_layers),
                                                               root_module_types=root_module_types))
        return iter(self._full_groups[key])

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
        key = (ratio, boost)
        if key not in self._sparsities:
            self._sparsities[key] = self._count(ratio, boost)
        return self._sparsities[key]

    def _count(self, ratio: float, boost=None) -> float:
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
        self.pruner.DG.__dict__.pop("get_all_groups", None)  # groups traced afresh from here: the model changes
        self._full_groups.clear()
        for group in self._groups(ratio, boost) or []:
            group.prune()
        self.adapter.fix_up(self.component, self.model)

    def search(self, target: float, upper: float, progress=None):
        """Reach ``target`` prunable-parameter sparsity: bisect the uniform ratio; if its steps are
        too coarse (narrow GroupNorm groups make them jump), give the k smallest groups the next
        ratio step and bisect k. Returns (ratio, boost, reached)."""
        trials = [0]

        def report(message):
            trials[0] += 1
            if progress is not None:
                progress(min(0.9, trials[0] / 24), message)

        # Each trial asks Torch-Pruning for a whole plan (the slow part), so the bracket is searched
        # with safeguarded interpolation rather than plain bisection: the first guess is the ratio
        # at which uniform channel pruning of both sides of every layer removes ``target``
        # (``1 - (1 - r)^2``), later ones interpolate the sparsities reached at the bracket's ends,
        # kept at least a tenth of the bracket inside it (then it shrinks at least that much).
        low, high = 0.0, upper
        reached_low, reached_high = 0.0, math.inf
        best = (0.0, None, 0.0)
        for trial in range(14):
            if trial == 0:
                middle = min(upper, 1.0 - math.sqrt(max(0.0, 1.0 - target)))
            elif math.isfinite(reached_high) and reached_high > reached_low:
                middle = low + (target - reached_low) * (high - low) / (reached_high - reached_low)
            else:
                middle = (low + high) / 2
            margin = 0.1 * (high - low)
            middle = min(max(middle, low + margin), high - margin)
            report(f"pruning: searching channel ratio ({middle:.4f})")
            reached = self.sparsity(middle)
            if math.isfinite(reached) and abs(reached - target) < abs(best[2] - target):
                best = (middle, None, reached)
            if abs(reached - target) < 0.005:
                return best
            if reached > target:
                high, reached_high = middle, reached
            else:
                low, reached_low = middle, reached
            if high - low < UNIFORM_RATIO_RESOLUTION:
                break  # one step of the uniform ratio jumps over the target: the k-groups search below refines
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


def max_channel_ratio(model) -> float:
    """The largest ratio that leaves every channel group (GroupNorm group, attention head,
    layer) at least one channel: Torch-Pruning keeps ``int(width * (1 - ratio))`` per group."""
    widths = [m.num_channels // m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)]
    adapter, component = _rules(model)
    widths += [group.head_dim for group in adapter.head_groups(component, model).values()]
    widths += [m.weight.shape[0] for m in prunable_layers(model).values()]
    return 1.0 - 1.0 / min(widths)


def apply_channel(model, scores, spec, progress=None):
    limit = max_channel_ratio(model)
    if spec.channel_ratio is not None and spec.channel_ratio >= limit:
        raise ValueError(
            f"channel_ratio {spec.channel_ratio:g} would remove all channels of a layer or group of this model "
            f"(its narrowest group has {round(1 / (1 - limit))} channels); allowed: channel_ratio < {limit:.3f}"
        )
    units_before = {name: int(m.weight.shape[0]) for name, m in prunable_layers(model).items()}
    sums = channel_sums(scores)
    importance = {name: out.float().cpu().numpy() for name, (out, _) in sums.items()}
    outcome = GranularityOutcome(model=model, importance=importance, units_before=units_before)
    if spec.channel_ratio is None and spec.sparsity == 0:
        outcome.structural_ratio = 0.0
    else:
        if progress is not None:
            progress(0.0, "pruning: building the dependency graph")
        planner = ChannelPlanner(model, scores, sums=sums)
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
                modules = {module: name for name, module in model.named_modules()}
                removed = {modules[module]: {side: sorted(indices) for side, indices in entry.items()}
                           for module, entry in planner.plan(ratio, boost).items() if module in modules}
            planner.prune(ratio, boost)
            if compensate is not None:
                if progress is not None:
                    progress(0.97, "pruning: compensating the remaining weights")
                compensate(model, removed)
        outcome.structural_ratio = ratio
        if boost is not None:
            outcome.notes["boosted_groups"] = {"ratio": boost[0], "count": boost[1], "of": len(planner.roots)}
    outcome.units_after = {name: int(m.weight.shape[0]) for name, m in prunable_layers(model).items()}
    return outcome


register_granularity(Granularity("channel", apply_channel, _no_check, True,
                                 "output channels with their dependency group (Torch-Pruning)"))
