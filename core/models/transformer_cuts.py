"""Structural cuts of transformer denoisers, done directly on the weights (no tracing).

Torch-Pruning cannot be used here: with ``qk_norm="rms_norm"`` (SD3.5) its head removal crashes
and its per-head-width pruning silently skips attention; cutting the residual width of DiT /
PixArt breaks ``PatchEmbed.pos_embed`` and adaLN-single (``docs/model-families.md``). The three
cuts below keep the residual width and change only what they own:

* :func:`remove_heads` -- whole heads of a diffusers ``Attention``: the rows of every projection
  that produces a head (``to_q/k/v`` and, in joint attention, ``add_q/k/v_proj``: the eight
  projections of a head with ``to_out`` and ``to_add_out``) and the columns of every projection
  that reads the heads; ``heads`` / ``inner_dim`` updated. Per-head qk-norms (``rms_norm``,
  ``layer_norm``: weights of size ``head_dim``) are shared by the heads and stay; norms across
  heads (size ``heads * head_dim``) lose the cut heads' entries.
* :func:`remove_ffn_neurons` -- hidden neurons of a ``FeedForward`` (``ff``, ``ff_context``): rows
  of the up-projection (both halves of a gated GEGLU/SwiGLU one) and columns of the down-projection.
* :func:`remove_blocks` -- whole transformer blocks; the config's ``num_layers`` (and SD3.5's
  ``dual_attention_layers``) updated so plain diffusers ``from_pretrained`` rebuilds the result;
  :func:`block_units` / :func:`remove_block_units` offer them to granularity ``block`` (through the
  transformer families' adapters).

Every function checks its indices and raises a short ValueError naming the argument.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# Projections of a diffusers Attention whose output rows are the heads, and those whose input
# columns read them (joint attention: the image stream and the context stream).
HEAD_ROW_PROJECTIONS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
HEAD_COLUMN_PROJECTIONS = ("to_out.0", "to_add_out")
QK_NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")


def _child(module: nn.Module, dotted: str):
    for part in dotted.split("."):
        if module is None:
            return None
        module = module[int(part)] if part.isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)) else getattr(module, part, None)
    return module


def _checked_keep(keep, total: int, field: str) -> torch.Tensor:
    try:
        indices = sorted({int(i) for i in keep})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{field} must be a sequence of integer indices, got {keep!r}") from error
    if not indices:
        raise ValueError(f"{field} must keep at least one of the {total} units")
    if indices[0] < 0 or indices[-1] >= total:
        raise ValueError(f"{field} must hold indices in [0, {total}), got {indices[0]}..{indices[-1]}")
    return torch.tensor(indices, dtype=torch.long)


def _select(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` of ``linear.weight`` (0: outputs, with the bias; 1: inputs)."""
    index = index.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(dim, index).clone(), requires_grad=linear.weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.data.index_select(0, index).clone(), requires_grad=linear.bias.requires_grad)
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


# ------------------------------------------------------------------------------------ heads
def head_dim(attention) -> int:
    return attention.to_q.out_features // attention.heads


def head_projections(attention) -> tuple[dict, dict]:
    """(``{name: Linear}`` of the projections whose output rows are heads, ``{name: Linear}`` of
    those whose input columns read them), for the projections this attention has."""
    rows = {name: _child(attention, name) for name in HEAD_ROW_PROJECTIONS}
    columns = {name: _child(attention, name) for name in HEAD_COLUMN_PROJECTIONS}
    return ({k: v for k, v in rows.items() if isinstance(v, nn.Linear)},
            {k: v for k, v in columns.items() if isinstance(v, nn.Linear)})


def check_attention(attention) -> None:
    """ValueError when ``attention``'s heads cannot be cut by :func:`remove_heads` (fused
    projections, grouped key/value heads, widths that are not ``heads * head_dim``)."""
    if getattr(attention, "fused_projections", False) or hasattr(attention, "to_qkv"):
        raise ValueError("attention with fused qkv projections: unfuse them (attention.fuse_projections(False)) before cutting heads")
    rows, columns = head_projections(attention)
    inner = attention.heads * head_dim(attention)
    for name, linear in rows.items():
        if linear.out_features != inner:
            raise ValueError(
                f"attention projection {name!r} has {linear.out_features} outputs, not heads x head_dim = {inner} "
                "(grouped key/value heads are not supported by the head cut)"
            )
    for name, linear in columns.items():
        if linear.in_features != inner:
            raise ValueError(f"attention projection {name!r} reads {linear.in_features} inputs, not heads x head_dim = {inner}")


def head_weight_count(attention) -> int:
    """Weights one head owns: ``head_dim`` rows of every producing projection and ``head_dim``
    columns of every reading one."""
    rows, columns = head_projections(attention)
    dim = head_dim(attention)
    return dim * (sum(l.in_features for l in rows.values()) + sum(l.out_features for l in columns.values()))


@torch.no_grad()
def remove_heads(attention, keep: Sequence[int]) -> None:
    """Keep only the heads ``keep`` (indices into the current heads) of a diffusers ``Attention``,
    in place. The attention scale is unchanged: ``head_dim`` is unchanged."""
    check_attention(attention)
    heads, dim = attention.heads, head_dim(attention)
    kept_heads = _checked_keep(keep, heads, "keep (heads)")
    channels = (kept_heads[:, None] * dim + torch.arange(dim)[None, :]).flatten()
    rows, columns = head_projections(attention)
    for linear in rows.values():
        _select(linear, channels, 0)
    for linear in columns.values():
        _select(linear, channels, 1)
    for name in QK_NORMS:  # norms across heads (size heads * head_dim) lose the cut heads' entries
        norm = getattr(attention, name, None)
        weight = getattr(norm, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.numel() == heads * dim and heads * dim != dim:
            norm.weight = nn.Parameter(weight.data.index_select(0, channels.to(weight.device)).clone())
            bias = getattr(norm, "bias", None)
            if isinstance(bias, torch.Tensor):
                norm.bias = nn.Parameter(bias.data.index_select(0, channels.to(bias.device)).clone())
            if hasattr(norm, "normalized_shape"):
                norm.normalized_shape = (len(channels),)
            if hasattr(norm, "dim"):
                norm.dim = torch.Size((len(channels),)) if isinstance(norm.dim, torch.Size) else len(channels)
    attention.heads = len(kept_heads)
    attention.inner_dim = len(channels)
    if getattr(attention, "inner_kv_dim", None) is not None:
        attention.inner_kv_dim = len(channels)
    if hasattr(attention, "sliceable_head_dim"):
        attention.sliceable_head_dim = len(kept_heads)


def check_heads_consistent(attention) -> None:
    """AssertionError unless every projection agrees with ``heads * head_dim`` (used by the tests
    and after every cut)."""
    inner = attention.heads * head_dim(attention)
    rows, columns = head_projections(attention)
    assert attention.inner_dim == inner, (attention.inner_dim, inner)
    assert all(l.out_features == l.weight.shape[0] == inner for l in rows.values()), {k: l.weight.shape for k, l in rows.items()}
    assert all(l.in_features == l.weight.shape[1] == inner for l in columns.values()), {k: l.weight.shape for k, l in columns.items()}


# ------------------------------------------------------------------------------------- FFN
def ffn_layers(feed_forward) -> tuple[nn.Linear, nn.Linear, bool]:
    """(up-projection, down-projection, gated) of a diffusers ``FeedForward``: ``net[0].proj``
    (GELU, GEGLU, ApproximateGELU, SwiGLU ...) and the ``nn.Linear`` after it. Gated activations
    (GEGLU, SwiGLU) produce ``2 * hidden`` rows: hidden states then gates."""
    net = getattr(feed_forward, "net", None)
    if not isinstance(net, nn.ModuleList) or not isinstance(getattr(net[0], "proj", None), nn.Linear):
        raise ValueError(f"feed_forward must be a diffusers FeedForward (net[0].proj, then a Linear), got {type(feed_forward).__name__}")
    up = net[0].proj
    downs = [m for m in list(net)[1:] if isinstance(m, nn.Linear)]
    if len(downs) != 1:
        raise ValueError("feed_forward must hold exactly one output Linear after its activation")
    down = downs[0]
    gated = up.out_features == 2 * down.in_features
    if not gated and up.out_features != down.in_features:
        raise ValueError(f"feed_forward widths disagree: up-projection {up.out_features} rows, down-projection {down.in_features} inputs")
    return up, down, gated


def ffn_width(feed_forward) -> int:
    return ffn_layers(feed_forward)[1].in_features


def ffn_neuron_weight_count(feed_forward) -> int:
    """Weights one hidden neuron owns: its up-projection row(s) and its down-projection column."""
    up, down, gated = ffn_layers(feed_forward)
    return up.in_features * (2 if gated else 1) + down.out_features


@torch.no_grad()
def remove_ffn_neurons(feed_forward, keep: Sequence[int]) -> None:
    """Keep only the hidden neurons ``keep`` of a diffusers ``FeedForward``, in place."""
    up, down, gated = ffn_layers(feed_forward)
    width = down.in_features
    kept = _checked_keep(keep, width, "keep (FFN neurons)")
    _select(up, torch.cat([kept, kept + width]) if gated else kept, 0)
    _select(down, kept, 1)


# ------------------------------------------------------------------------------------ blocks
def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"model must hold a transformer_blocks ModuleList, got {type(model).__name__}")
    return blocks


def removable_blocks(model: nn.Module) -> list[int]:
    """Indices of the blocks that :func:`remove_blocks` may drop: all, except SD3's last block
    (``context_pre_only``: a config rebuilds the last block of any depth that way, so dropping it
    would make the new last block inexpressible)."""
    blocks = transformer_blocks(model)
    last = len(blocks) - 1
    return [i for i, block in enumerate(blocks) if not (i == last and getattr(block, "context_pre_only", False))]


@torch.no_grad()
def remove_blocks(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the transformer blocks ``keep`` (in their order), in place; ``num_layers`` and
    ``dual_attention_layers`` in the config follow, so ``type(model).from_config(model.config)``
    has the same parameter shapes."""
    blocks = transformer_blocks(model)
    kept = _checked_keep(keep, len(blocks), "keep (blocks)").tolist()
    fixed = set(range(len(blocks))) - set(removable_blocks(model))
    if fixed - set(kept):
        raise ValueError(f"keep (blocks) must include block(s) {sorted(fixed)}: the last block of this model is context_pre_only")
    model.transformer_blocks = nn.ModuleList([blocks[i] for i in kept])
    updates = {"num_layers": len(kept)}
    dual = getattr(model.config, "dual_attention_layers", None)
    if dual:
        updates["dual_attention_layers"] = tuple(new for new, old in enumerate(kept) if old in set(dual))
    model.register_to_config(**updates)


def block_units(model: nn.Module) -> list[dict]:
    """The removable blocks of a transformer as ``ModelAdapter.block_units`` describes them: one
    unit per block of :func:`removable_blocks` (``kind`` ``"transformer"``, ``index`` its position)."""
    blocks = transformer_blocks(model)
    return [{"name": f"transformer_blocks.{i}", "modules": [blocks[i]], "kind": "transformer", "exclusive": None,
             "index": i} for i in removable_blocks(model)]


def remove_block_units(model: nn.Module, units) -> None:
    """Remove the blocks of ``units`` (from :func:`block_units`) in place (:func:`remove_blocks`)."""
    gone = {unit["index"] for unit in units}
    remove_blocks(model, [i for i in range(len(transformer_blocks(model))) if i not in gone])


def block_counts(model: nn.Module) -> dict:
    """``{"transformer_blocks": n}``: the depth a block cut changes."""
    return {"transformer_blocks": len(transformer_blocks(model))}
