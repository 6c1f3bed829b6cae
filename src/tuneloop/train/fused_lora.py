"""Fused LoRA linears for training: base + adapter in one autograd function, shared inputs batched.

PEFT computes a LoRA linear as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: under bf16
autocast that is ~10 operations per layer (the input cast to the adapter's fp32 and back, the
dropout mask and its multiply, two small matmuls with their weight casts, the scaling multiply and
the add), each dispatched on its own, and as many again in backward. On a 2-core CPU with ~450
tokens per micro-batch those small operations cost about as much as the matmuls they surround.

:class:`FusedLoraFunction` computes ``y = x W^T + x_d A^T (s B)^T`` (``x_d`` the dropped-out input,
``s`` the scaling) with the scaling folded into B and the dropout mask applied once, and writes its
own backward, which returns no gradient for the frozen base weight. Projections that read the same
input (q/k/v of an attention block, gate/up of an MLP) run as one group: one base matmul over their
concatenated weights (the members' weights become views into it, so no memory is added), one
batched A matmul and one block-diagonal B matmul. Each member keeps an independent dropout mask, as
with PEFT.

The PEFT modules stay where they are, with their parameters and names, so checkpoints and saved
adapters are unchanged; only their ``forward`` is replaced (as QAT does, train/qat.py), and only in
training mode: evaluation and generation run PEFT's own forward. A group member called with a
tensor other than the one the group last computed (a model that does not share the input after
all) makes the group fall back to fusing each member alone, so the result is always right.

    fuse_lora(peft_model)  # -> number of LoRA linears fused; unfuse_lora(peft_model) undoes it
"""

from __future__ import annotations

import types

import torch
from torch import nn

from tuneloop.train.dropout import keep_mask

# Sibling projections that read the same input in the decoder layers transformers ships.
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


class FusedLoraFunction(torch.autograd.Function):
    """``x (.., in) -> (.., sum of outs)`` for k LoRA linears sharing ``x``.

    ``weight``: the concatenated frozen base weights (sum outs, in); ``lora_a``: (k r, in) stacked;
    ``lora_b``: block-diagonal (sum outs, k r) with each block times its scaling; ``keep``: the
    (k, tokens, in) dropout mask or None. All in the compute dtype; A and B gradients come back in
    the dtype of ``a_params``/``b_params`` (fp32 master weights) through :func:`fused_lora`.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, keep, keep_scale):
        k = keep.shape[0] if keep is not None else 1
        x2 = x.reshape(-1, x.shape[-1])
        y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        if keep is None:
            dropped = x2
            h = x2 @ lora_a.t()  # (N, k r)
        else:
            dropped = torch.where(keep, x2 * keep_scale, 0)  # (k, N, in): one mask per member
            rank = lora_a.shape[0] // k
            h = torch.bmm(dropped, lora_a.view(k, rank, -1).transpose(1, 2))  # (k, N, r)
            h = h.transpose(0, 1).reshape(x2.shape[0], k * rank)
        y.addmm_(h, lora_b.t())
        ctx.save_for_backward(dropped, h, weight, lora_a, lora_b, keep)
        ctx.keep_scale = keep_scale
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        dropped, h, weight, lora_a, lora_b, keep = ctx.saved_tensors
        g = grad_y.reshape(-1, weight.shape[0]).to(weight.dtype)
        grad_h = g @ lora_b  # (N, k r)
        grad_b = g.t() @ h  # (sum outs, k r): only the diagonal blocks are used
        grad_x = None
        if keep is None:
            grad_a = grad_h.t() @ dropped
            if ctx.needs_input_grad[0]:
                grad_x = torch.addmm(g @ weight, grad_h, lora_a)
        else:
            k, n = keep.shape[0], keep.shape[1]
            gh = grad_h.view(n, k, -1).transpose(0, 1)  # (k, N, r)
            grad_a = torch.bmm(gh.transpose(1, 2), dropped).reshape(lora_a.shape)
            if ctx.needs_input_grad[0]:
                through_adapter = torch.bmm(gh, lora_a.view(k, -1, lora_a.shape[1])) * keep
                grad_x = (g @ weight).add_(through_adapter.sum(0), alpha=ctx.keep_scale)
        grad_x = grad_x.view(ctx.x_shape) if grad_x is not None else None
        return grad_x, None, None, grad_a, grad_b, None, None


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What ``F.linear`` would compute in here: the autocast dtype when autocast is on, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def fused_lora(x, weight, bias, a_params, b_params, scalings, dropout: nn.Module, training: bool):
    """Base + LoRA for k linears sharing ``x`` (``dropout``: their LoRA dropout module): returns
    (.., sum outs) in the compute dtype."""
    dtype = compute_dtype(x, weight)
    k, rank = len(a_params), a_params[0].shape[0]
    lora_a = torch.cat(a_params).to(dtype)
    # Block-diagonal B, each block times its scaling: one matmul instead of k (the zero blocks cost
    # k x the adapter's B flops, a few percent of the base matmul at r=16).
    lora_b = torch.block_diag(*(b * s for b, s in zip(b_params, scalings))).to(dtype)
    keep, keep_scale = None, 1.0
    p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
    if training and p > 0:
        shape = torch.Size((k, x.numel() // x.shape[-1], x.shape[-1]))
        if type(dropout) is nn.Dropout:  # the stock module: its one-draw-per-element mask
            keep = torch.empty(shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
        else:  # FastDropout (train/dropout.py): the same masks it would draw
            keep = keep_mask(shape, p, x.device)
        keep_scale = 1.0 / (1.0 - p)
    with torch.autocast(x.device.type, enabled=False):
        return FusedLoraFunction.apply(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                       lora_a, lora_b, keep, keep_scale)


# ---------------------------------------------------------------------------------------------
# Wiring into a PEFT model


def fusable(layer: nn.Module) -> bool:
    """A plain PEFT LoRA linear with one adapter: no DoRA or other variant, no LoRA bias, an
    ``nn.Linear`` base (not quantized), dropout that is ``nn.Dropout`` (or ours) or none."""
    from peft.tuners.lora.layer import Linear as LoraLinear  # peft is loaded: the model is a PEFT model

    if type(layer) is not LoraLinear:
        return False
    adapters = list(getattr(layer, "lora_A", {}))
    if len(adapters) != 1 or type(layer.base_layer) is not nn.Linear or layer.fan_in_fan_out:
        return False
    name = adapters[0]
    dropout = layer.lora_dropout[name]
    return (name not in layer.lora_variant and not layer.lora_bias.get(name, False)
            and layer.lora_B[name].bias is None and isinstance(dropout, (nn.Dropout, nn.Identity)))


def adapter_of(layer: nn.Module) -> str:
    return next(iter(layer.lora_A))


def can_run_fused(layer: nn.Module) -> bool:
    """At call time: training, adapter active and unmerged (else PEFT's own forward runs)."""
    return (layer.training and not layer.disable_adapters and not layer.merged
            and list(layer.active_adapters) == [adapter_of(layer)])


class LoraGroup:
    """LoRA linears computed together: the first member called with ``x`` computes every member's
    output and the others take theirs; one called with any other input ends the sharing."""

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self.sizes = [layer.base_layer.out_features for layer in layers]
        self.shared = len(layers) > 1
        self.weight: torch.Tensor | None = None
        self.pending: tuple[torch.Tensor, list] | None = None  # (input, outputs not yet taken)

    def concatenated_weight(self) -> torch.Tensor:
        """The members' base weights as one tensor; the members' weights are views into it. Rebuilt
        when a weight was replaced (``model.to(...)``), so it never goes stale."""
        weights = [layer.base_layer.weight for layer in self.layers]
        if self.weight is not None and self.weight.dtype == weights[0].dtype and all(
                w.data_ptr() == self.weight[off].data_ptr() for w, off in zip(weights, self.offsets())):
            return self.weight
        with torch.no_grad():
            self.weight = torch.cat([w.detach() for w in weights])
            for w, part in zip(weights, self.weight.split(self.sizes)):
                w.data = part
        return self.weight

    def offsets(self) -> list[int]:
        return [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def compute(self, layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
        name = adapter_of(layers[0])
        if len(layers) == len(self.layers) and len(layers) > 1:
            weight = self.concatenated_weight()
        else:
            weight = torch.cat([layer.base_layer.weight for layer in layers]) if len(layers) > 1 else (
                layers[0].base_layer.weight)
        biases = [layer.base_layer.bias for layer in layers]
        bias = None if biases[0] is None else torch.cat(biases)
        dropout = layers[0].lora_dropout[name]
        return fused_lora(x, weight, bias, [layer.lora_A[name].weight for layer in layers],
                          [layer.lora_B[name].weight for layer in layers],
                          [layer.scaling[name] for layer in layers],
                          dropout, layers[0].training)

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        index = self.layers.index(layer)
        if self.pending is not None:
            source, outputs = self.pending
            if source is x and outputs[index] is not None:
                out, outputs[index] = outputs[index], None
                if all(o is None for o in outputs):
                    self.pending = None
                return out
            self.pending, self.shared = None, False  # not called with one input after all
        if not self.shared or not all(can_run_fused(m) for m in self.layers):
            return self.compute([layer], x)
        outputs = list(self.compute(self.layers, x).split(self.sizes, dim=-1))
        out, outputs[index] = outputs[index], None
        self.pending = (x, outputs)
        return out


def fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The forward a fused layer gets: the group's in training, PEFT's otherwise."""
    if args or kwargs or not can_run_fused(layer):
        return type(layer).forward(layer, x, *args, **kwargs)
    return layer._tuneloop_lora_group.forward(layer, x)


def lora_groups(model: nn.Module) -> list[list[nn.Module]]:
    """Fusable LoRA linears, grouped: siblings named in ``SHARED_INPUT`` with the same input size,
    rank and dropout go together; every other fusable layer is a group of one."""
    groups = []
    for parent in model.modules():
        children = {name: child for name, child in parent.named_children() if fusable(child)}
        for names in SHARED_INPUT:
            members = [children[n] for n in names if n in children]
            if len(members) > 1 and len({signature(m) for m in members}) == 1:
                groups.append(members)
                for n in names:
                    children.pop(n, None)
        groups.extend([child] for child in children.values())
    return groups


def signature(layer: nn.Module) -> tuple:
    name = adapter_of(layer)
    dropout = layer.lora_dropout[name]
    return (layer.base_layer.in_features, layer.lora_A[name].weight.shape[0], getattr(dropout, "p", 0.0),
            layer.base_layer.bias is None, layer.base_layer.weight.dtype)


def fuse_lora(model: nn.Module) -> int:
    """Give every fusable LoRA linear of ``model`` the fused forward; returns how many."""
    count = 0
    for members in lora_groups(model):
        group = LoraGroup(members)
        for layer in members:
            layer._tuneloop_lora_group = group
            layer.forward = types.MethodType(fused_forward, layer)
            count += 1
    return count


def unfuse_lora(model: nn.Module) -> int:
    """Back to PEFT's forward everywhere, each base weight in its own storage again; returns how many."""
    count = 0
    for module in model.modules():
        group = getattr(module, "_tuneloop_lora_group", None)
        if group is None:
            continue
        if group.weight is not None:
            with torch.no_grad():
                module.base_layer.weight.data = module.base_layer.weight.detach().clone()
        del module.forward, module._tuneloop_lora_group
        count += 1
    return count
