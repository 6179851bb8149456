"""ADRec's causal Transformer block in training as one autograd function.

Same maths as :class:`~recbole_diffusion.model.adrec.CausalBlock` (post-LN,
``h = LN(x + Drop(Attn(x)))``, ``out = LN(h + Drop(FFN(h)))``, causal
multi-head self-attention with dropout on its weights), with the backward
pass written out. At the benchmarks' ``cpu`` sizes (16 sequences of 20
tokens) a block's step is mostly fixed cost per operation: through autograd
it runs about 160 operations (the products and their transposes, views,
``detach`` and gradient accumulation around every layer), this function about
50. The arithmetic is the same, in the same order where it matters: the
outputs and gradients equal the module's to float rounding.

The dropout masks are :func:`~recbole_diffusion.fast_layers.dropout_mask`'s,
drawn in the module's order (attention weights, attention output, feed-forward
output) and of the module's shapes, so the random stream is the module's too.
The function serves only where that holds: a CPU tensor, ``fast_dropout`` on
(the module's dropouts are
:class:`~recbole_diffusion.fast_layers.FastDropout`), and an activation whose
derivative is written here (exact GELU, ReLU); otherwise the module runs
(:func:`supports`).

Reference: Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (the
block); Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018
(its post-LN causal layout, which ADRec uses).
Deviations: none (an implementation of the same function).
"""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_diffusion.fast_layers import FastDropout, causal_bias, dropout_mask

__all__ = ["causal_block", "supports"]

_NO_MASK = torch.empty(0)  # stands for "no dropout" among the function's inputs


def _activation_kind(activation):
    if type(activation) is nn.GELU and activation.approximate == "none":
        return "gelu"
    if type(activation) is nn.ReLU:
        return "relu"
    return None


def supports(block, hidden):
    """Whether :func:`causal_block` computes ``block(hidden)`` exactly here."""
    return (
        hidden.device.type == "cpu"
        and hidden.dtype in (torch.float32, torch.float64)
        and type(block.dropout) is FastDropout
        and block.attention.fast_attention_dropout
        and _activation_kind(block.feed_forward[1]) is not None
    )


def _mask(shape, p, dtype):
    mask = dropout_mask(shape, p, dtype)
    return _NO_MASK if mask is None else mask


def causal_block(block, hidden):
    """``block(hidden)`` in training (see the module): [B L H] -> (output
    [B L H], (keys, values) each [B heads L H/heads], without gradient)."""
    attention = block.attention
    batch, length, hidden_size = hidden.shape
    heads = attention.n_heads
    # drawn in the module's order, at its shapes: the same stream
    attention_mask = _mask(
        (batch, heads, length, length), attention.attn_dropout_prob, hidden.dtype
    )
    attention_output_mask = _mask(hidden.shape, block.dropout.p, hidden.dtype)
    feed_forward_output_mask = _mask(hidden.shape, block.dropout.p, hidden.dtype)
    expand, activation, contract = block.feed_forward
    output, keys, values = _CausalBlock.apply(
        hidden,
        attention_mask,
        attention_output_mask,
        feed_forward_output_mask,
        heads,
        _activation_kind(activation),
        (block.attention_norm.eps, block.feed_forward_norm.eps),
        attention.query.weight,
        attention.query.bias,
        attention.key.weight,
        attention.key.bias,
        attention.value.weight,
        attention.value.bias,
        attention.output.weight,
        attention.output.bias,
        block.attention_norm.weight,
        block.attention_norm.bias,
        expand.weight,
        expand.bias,
        contract.weight,
        contract.bias,
        block.feed_forward_norm.weight,
        block.feed_forward_norm.bias,
    )
    return output, (keys, values)


def _apply_mask(x, mask):
    """``x * mask`` in place; ``x`` unchanged for :data:`_NO_MASK`."""
    return x if mask.numel() == 0 else x.mul_(mask.view_as(x))


def _split_heads(rows, batch, length, heads):
    """[B*L 3H] (q, k, v side by side) -> [3 B*heads L H/heads], one copy."""
    head_size = rows.shape[1] // (3 * heads)
    return (
        rows.view(batch, length, 3, heads, head_size)
        .permute(2, 0, 3, 1, 4)
        .reshape(3, batch * heads, length, head_size)
    )


def _merge_heads(x, batch, heads):
    """[B*heads L H/heads] -> [B*L H], one copy."""
    _, length, head_size = x.shape
    return (
        x.view(batch, heads, length, head_size)
        .transpose(1, 2)
        .reshape(batch * length, heads * head_size)
    )


class _CausalBlock(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden,
        attention_mask,
        attention_output_mask,
        feed_forward_output_mask,
        heads,
        activation,
        epsilons,
        query_weight,
        query_bias,
        key_weight,
        key_bias,
        value_weight,
        value_bias,
        output_weight,
        output_bias,
        norm1_weight,
        norm1_bias,
        expand_weight,
        expand_bias,
        contract_weight,
        contract_bias,
        norm2_weight,
        norm2_bias,
    ):
        batch, length, hidden_size = hidden.shape
        rows = hidden.reshape(batch * length, hidden_size)  # [N H]
        qkv_weight = torch.cat([query_weight, key_weight, value_weight])  # [3H H]
        qkv_bias = torch.cat([query_bias, key_bias, value_bias])
        qkv = _split_heads(
            torch.addmm(qkv_bias, rows, qkv_weight.t()), batch, length, heads
        )  # [3 B*heads L H/heads]
        query, key, value = qkv.unbind(0)
        scale = query.shape[-1] ** -0.5
        scores = torch.baddbmm(
            causal_bias(length, length, hidden.dtype, hidden.device),
            query,
            key.transpose(1, 2),
            alpha=scale,
        )  # [B*heads L L]
        weights = torch.softmax(scores, dim=-1)
        dropped = weights
        if attention_mask.numel():
            dropped = weights * attention_mask.view_as(weights)
        attended = _merge_heads(torch.bmm(dropped, value), batch, heads)  # [N H]
        # x + Drop(Attn(x)), then LN
        norm1_input = _apply_mask(
            torch.addmm(output_bias, attended, output_weight.t()),
            attention_output_mask,
        ).add_(rows)
        norm1, mean1, rstd1 = torch.native_layer_norm(
            norm1_input, (hidden_size,), norm1_weight, norm1_bias, epsilons[0]
        )
        inner = torch.addmm(expand_bias, norm1, expand_weight.t())  # [N inner]
        activated = F.gelu(inner) if activation == "gelu" else torch.relu(inner)
        norm2_input = _apply_mask(
            torch.addmm(contract_bias, activated, contract_weight.t()),
            feed_forward_output_mask,
        ).add_(norm1)
        output, mean2, rstd2 = torch.native_layer_norm(
            norm2_input, (hidden_size,), norm2_weight, norm2_bias, epsilons[1]
        )
        ctx.save_for_backward(
            rows,
            qkv,
            qkv_weight,
            weights,
            dropped,
            attention_mask,
            attended,
            attention_output_mask,
            norm1_input,
            mean1,
            rstd1,
            norm1,
            inner,
            activated,
            feed_forward_output_mask,
            norm2_input,
            mean2,
            rstd2,
            output_weight,
            norm1_weight,
            norm1_bias,
            expand_weight,
            contract_weight,
            norm2_weight,
            norm2_bias,
        )
        ctx.shape = (batch, length, hidden_size, heads, scale, activation)
        split = (batch, heads, length, hidden_size // heads)
        keys, values = key.view(split), value.view(split)
        ctx.mark_non_differentiable(keys, values)
        return output.view(batch, length, hidden_size), keys, values

    @staticmethod
    def backward(ctx, grad_output, _grad_keys, _grad_values):
        (
            rows,
            qkv,
            qkv_weight,
            weights,
            dropped,
            attention_mask,
            attended,
            attention_output_mask,
            norm1_input,
            mean1,
            rstd1,
            norm1,
            inner,
            activated,
            feed_forward_output_mask,
            norm2_input,
            mean2,
            rstd2,
            output_weight,
            norm1_weight,
            norm1_bias,
            expand_weight,
            contract_weight,
            norm2_weight,
            norm2_bias,
        ) = ctx.saved_tensors
        batch, length, hidden_size, heads, scale, activation = ctx.shape
        every = [True, True, True]
        grad_rows = grad_output.reshape(batch * length, hidden_size).contiguous()

        # out = LN2(norm1 + Drop(FFN(norm1)))
        grad_norm2_input, grad_norm2_weight, grad_norm2_bias = (
            torch.ops.aten.native_layer_norm_backward(
                grad_rows,
                norm2_input,
                (hidden_size,),
                mean2,
                rstd2,
                norm2_weight,
                norm2_bias,
                every,
            )
        )
        grad_contracted = grad_norm2_input
        if feed_forward_output_mask.numel():
            grad_contracted = grad_norm2_input * feed_forward_output_mask.view_as(
                grad_norm2_input
            )
        grad_contract_weight = grad_contracted.t() @ activated
        grad_contract_bias = grad_contracted.sum(0)
        grad_activated = grad_contracted @ contract_weight
        if activation == "gelu":
            grad_inner = torch.ops.aten.gelu_backward(grad_activated, inner)
        else:
            grad_inner = torch.ops.aten.threshold_backward(grad_activated, activated, 0)
        grad_expand_weight = grad_inner.t() @ norm1
        grad_expand_bias = grad_inner.sum(0)
        # the residual's gradient plus the feed-forward's
        grad_norm1 = torch.addmm(grad_norm2_input, grad_inner, expand_weight)

        # norm1 = LN1(x + Drop(Attn(x)))
        grad_norm1_input, grad_norm1_weight, grad_norm1_bias = (
            torch.ops.aten.native_layer_norm_backward(
                grad_norm1,
                norm1_input,
                (hidden_size,),
                mean1,
                rstd1,
                norm1_weight,
                norm1_bias,
                every,
            )
        )
        grad_projected = grad_norm1_input
        if attention_output_mask.numel():
            grad_projected = grad_norm1_input * attention_output_mask.view_as(
                grad_norm1_input
            )
        grad_output_weight = grad_projected.t() @ attended
        grad_output_bias = grad_projected.sum(0)
        head_size = hidden_size // heads
        grad_attended = (
            (grad_projected @ output_weight)
            .view(batch, length, heads, head_size)
            .transpose(1, 2)
            .reshape(batch * heads, length, head_size)
        )
        query, key, value = qkv.unbind(0)
        grad_qkv = torch.empty_like(qkv)  # [3 B*heads L H/heads]
        torch.bmm(dropped.transpose(1, 2), grad_attended, out=grad_qkv[2])
        grad_weights = torch.bmm(grad_attended, value.transpose(1, 2))  # [B*heads L L]
        if attention_mask.numel():
            grad_weights.mul_(attention_mask.view_as(grad_weights))
        grad_scores = torch.ops.aten._softmax_backward_data(
            grad_weights, weights, -1, weights.dtype
        )
        torch.bmm(grad_scores, key, out=grad_qkv[0]).mul_(scale)
        torch.bmm(grad_scores.transpose(1, 2), query, out=grad_qkv[1]).mul_(scale)
        grad_qkv_rows = (
            grad_qkv.view(3, batch, heads, length, head_size)
            .permute(1, 3, 0, 2, 4)
            .reshape(batch * length, 3 * hidden_size)
        )  # [N 3H]
        grad_qkv_weight = grad_qkv_rows.t() @ rows  # [3H H]
        grad_qkv_bias = grad_qkv_rows.sum(0)
        # the residual's gradient plus the attention's
        grad_hidden = torch.addmm(grad_norm1_input, grad_qkv_rows, qkv_weight)
        grad_query_weight, grad_key_weight, grad_value_weight = grad_qkv_weight.chunk(3)
        grad_query_bias, grad_key_bias, grad_value_bias = grad_qkv_bias.chunk(3)
        return (
            grad_hidden.view(batch, length, hidden_size),
            None,
            None,
            None,
            None,
            None,
            None,
            grad_query_weight,
            grad_query_bias,
            grad_key_weight,
            grad_key_bias,
            grad_value_weight,
            grad_value_bias,
            grad_output_weight,
            grad_output_bias,
            grad_norm1_weight,
            grad_norm1_bias,
            grad_expand_weight,
            grad_expand_bias,
            grad_contract_weight,
            grad_contract_bias,
            grad_norm2_weight,
            grad_norm2_bias,
        )
