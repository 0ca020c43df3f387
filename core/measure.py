"""The one parameter / MAC counter: the prune report, ``evaluate``, sweeps, the cost estimate and
the app all count through :func:`count_model`, so one model has one MAC figure everywhere.

MACs of one forward pass on one input of the network's own size (the family adapter's
``example_inputs``), counted by forward hooks that are always removed:

* ``nn.Conv2d`` / ``nn.Linear``: ``output elements x (in / groups) x kernel`` (multiplications of
  the weight; bias additions are not MACs);
* attention: the two matmuls inside ``scaled_dot_product_attention`` that no module sees,
  ``Q K^T`` and ``A V``: ``2 x L_q x L_kv x inner_dim`` per attention module, counted once, as a row
  of type ``Attention`` (``L_kv`` is the context length for cross-attention).

Masked weights (``torch.nn.utils.prune``, or zeros written by unstructured / N:M pruning) leave
``params`` and ``macs`` unchanged and lower ``nonzero_params``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

COLUMNS = ["name", "type", "params", "macs", "nonzero"]


@dataclass
class ModelCount:
    """Counted size of a network: totals plus one row per leaf layer and per attention module
    (``layers``: name, type, params, macs, nonzero). ``macs`` includes ``attention_macs``."""

    params: int
    macs: int
    nonzero_params: int
    attention_macs: int
    layers: "object"  # pandas.DataFrame

    def to_dict(self) -> dict:
        return {"params": self.params, "macs": self.macs, "nonzero_params": self.nonzero_params,
                "attention_macs": self.attention_macs}


def effective_parameters(module: nn.Module):
    """A module's own weights as used in forward: ``torch.nn.utils.prune`` masks applied (``w_orig * mask``)."""
    for name, parameter in module.named_parameters(recurse=False):
        if name.endswith("_orig") and isinstance(getattr(module, name[: -len("_orig")], None), torch.Tensor):
            yield getattr(module, name[: -len("_orig")])
        else:
            yield parameter


def _rules(module, adapter, component):
    if adapter is None or component is None:
        from .models import adapter_for_module

        found, owned = adapter_for_module(module)
        adapter, component = adapter or found, component or owned
    return adapter, component


@torch.no_grad()
def layer_macs(module: nn.Module, adapter=None, component: str | None = None, inputs: dict | None = None) -> dict[str, int]:
    """Name -> MACs of one forward pass: conv/linear layers and attention modules (see module doc)."""
    adapter, component = _rules(module, adapter, component)
    attention_names = set(adapter.attention_modules(component, module))
    macs: dict[str, int] = {}
    handles = []

    def layer_hook(name):
        def count(layer, args, output):
            per_output = layer.weight[0].numel()  # in/groups * kh * kw, or in_features
            macs[name] = macs.get(name, 0) + int(output.numel() // output.shape[0]) * int(per_output)
        return count

    def attention_hook(name):
        def count(attention, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            query_length = hidden.shape[2] * hidden.shape[3] if hidden.ndim == 4 else hidden.shape[1]
            context = kwargs.get("encoder_hidden_states")
            if context is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
                context = args[1]
            key_length = query_length if context is None else context.shape[1]
            inner_dim = attention.to_q.out_features
            macs[name] = macs.get(name, 0) + 2 * int(query_length) * int(key_length) * int(inner_dim)
        return count

    try:
        for name, child in module.named_modules():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                handles.append(child.register_forward_hook(layer_hook(name)))
            elif name in attention_names:
                handles.append(child.register_forward_hook(attention_hook(name), with_kwargs=True))
        _shape_forward(module, inputs if inputs is not None else adapter.example_inputs(component, module))
    finally:
        for handle in handles:
            handle.remove()
    return macs


def _shape_forward(module: nn.Module, inputs: dict) -> None:
    """One forward pass for its shapes only: on the ``meta`` device (every parameter, buffer and
    input replaced by a data-free tensor of its shape and dtype, through ``functional_call``), so
    counting a billion-parameter model costs no arithmetic (an fp16 UNet's forward on a CPU
    without fp16 arithmetic takes minutes). The hooks see the same shapes; a model whose forward
    needs real values (a data-dependent branch) runs for real instead."""
    from torch.func import functional_call

    def to_meta(value):
        return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value

    if any(child._forward_pre_hooks for child in module.modules()):
        # a pre-hook may write tensors onto the module (torch.nn.utils.prune sets ``weight`` from
        # ``weight_orig * weight_mask``): on meta inputs it would leave meta tensors behind
        module(**inputs)
        return
    state = {name: to_meta(tensor) for name, tensor in
             list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))}
    meta_inputs = {key: to_meta(value) for key, value in inputs.items()}
    try:
        functional_call(module, state, (), meta_inputs, tie_weights=False, strict=False)
        return
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        pass  # some op has no meta kernel or reads a value: count with the real forward
    module(**inputs)


def count_model(module: nn.Module, adapter=None, component: str | None = None) -> ModelCount:
    """Parameters, MACs (one input, one forward pass) and non-zero weights of ``module``, per layer too."""
    import pandas as pd

    adapter, component = _rules(module, adapter, component)
    was_training = module.training
    module.eval()
    try:
        macs = layer_macs(module, adapter, component)
    finally:
        module.train(was_training)
    attention_names = set(adapter.attention_modules(component, module))
    rows = []
    for name, child in module.named_modules():
        if name in attention_names:
            rows.append({"name": name, "type": "Attention", "params": 0, "macs": int(macs.get(name, 0)), "nonzero": 0})
            continue
        if any(True for _ in child.children()):
            continue
        own_params = sum(p.numel() for p in child.parameters(recurse=False))
        child_macs = int(macs.get(name, 0))
        if own_params == 0 and child_macs == 0:
            continue
        nonzero = sum(int(torch.count_nonzero(p.detach())) for p in effective_parameters(child))
        rows.append({"name": name, "type": type(child).__name__, "params": own_params, "macs": child_macs, "nonzero": nonzero})
    layers = pd.DataFrame(rows, columns=COLUMNS)
    nonzero_total = sum(int(torch.count_nonzero(p.detach())) for m in module.modules() for p in effective_parameters(m))
    attention_total = int(sum(macs.get(name, 0) for name in attention_names))
    return ModelCount(params=sum(p.numel() for p in module.parameters()), macs=int(sum(macs.values())),
                      nonzero_params=nonzero_total, attention_macs=attention_total, layers=layers)


def count_pipeline(pipeline, components=None) -> dict:
    """Parameters / MACs / non-zero weights summed over ``components`` (default: every prunable
    network of the pipeline's family: the denoiser, and the autoencoder of latent models).
    MACs are per denoiser call plus one autoencoder pass (encode + decode) for each image."""
    from .models import adapter_for

    adapter = adapter_for(pipeline)
    names = components or adapter.prunable_components(pipeline)
    totals = {"params": 0, "macs": 0, "nonzero_params": 0, "attention_macs": 0}
    for name in names:
        counted = count_model(getattr(pipeline, name), adapter, name).to_dict()
        for key in totals:
            totals[key] += counted[key]
    return totals
