"""CDDRec's fast paths against independent computations.

The decoder computes its attention head-major ([N h S Lk]) with the queries
prescaled; these tests hold it to a token-by-token computation of Eq. 3 and,
in training, to the step-major layout's dropout stream. The NT-Xent
normalises its tokens itself; it is held to ``F.normalize`` and autograd.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import UnitDataset, unit_config
from torch import nn

from recbole_diffusion.fast_layers import FastDropout
from recbole_diffusion.model.cddrec import CDDRec
from recbole_diffusion.model.nt_xent import NORMALIZE_EPS, Workspace, nt_xent


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = unit_config(
        "CDDRec",
        **{
            "hidden_size": 16,
            "inner_size": 32,
            "n_heads": 2,
            "MAX_ITEM_LIST_LENGTH": 12,
            **overrides,
        },
    )
    return CDDRec(config, UnitDataset())


def decoder_inputs(model, rows, length, seed=1):
    """Encoder states of random right-padded rows and every real token."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    lengths[0] = length  # one full row
    item_seq = torch.randint(1, 20, (rows, length), generator=generator)
    real = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    item_seq = item_seq * real
    with torch.no_grad():
        context = model.encode(item_seq)
    batch_index, position_index = real.nonzero(as_tuple=True)
    return context.requires_grad_(), real, batch_index, position_index


def token_by_token(decoder, context, real, steps, batch_index, position_index):
    """Eq. 3 for one token and one step at a time (dropout off), [S N H]."""
    heads, size = decoder.n_heads, decoder.head_size
    outputs = torch.empty(steps.numel(), batch_index.numel(), context.shape[-1])
    outputs = outputs.to(context.dtype)
    for i, step in enumerate(steps.tolist()):
        query = decoder.query(decoder.step_embedding.weight[step])  # [H]
        for n, (row, position) in enumerate(
            zip(batch_index.tolist(), position_index.tolist())
        ):
            visible = [m for m in range(position + 1) if real[row, m]] or [0]
            states = context[row, visible]  # [K H]
            keys, values = decoder.key(states), decoder.value(states)
            per_head = []
            for head in range(heads):
                part = slice(head * size, (head + 1) * size)
                logits = keys[:, part] @ query[part] / math.sqrt(size)  # [K]
                per_head.append(torch.softmax(logits, 0) @ values[:, part])
            attended = decoder.output(torch.cat(per_head))
            hidden = decoder.attn_norm(context[row, position] + attended)
            outputs[i, n] = decoder.ffn_norm(hidden + decoder.feed_forward(hidden))
    return outputs


def step_major(decoder, context, real, steps, batch_index, position_index):
    """The decoder with its attention laid out [N S h Lk] and the logits
    scaled after the product: every dropout module is called in the same
    order on tensors of the same layout as the step-major form."""
    batch, length, hidden = context.shape
    heads, size = decoder.n_heads, decoder.head_size
    query = decoder.query(decoder.step_embedding(steps)).view(-1, heads, size)
    key = decoder.key(context).view(batch, length, heads, size)
    value = decoder.value(context).view(batch, length, heads, size)
    logits = torch.einsum("shd,bmhd->bshm", query, key)[batch_index] / math.sqrt(size)
    positions = torch.arange(length)
    allowed = (positions <= position_index.unsqueeze(1)) & real[batch_index]
    allowed[:, 0] |= ~allowed.any(dim=1)
    logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
    probs = decoder.attn_dropout(torch.softmax(logits, dim=-1))  # [N S h Lk]
    attended = torch.einsum("nshm,nmhd->snhd", probs, value[batch_index])
    attended = attended.reshape(steps.numel(), batch_index.numel(), hidden)
    residual = context[batch_index, position_index]
    hidden_states = decoder.attn_norm(
        residual + decoder.attn_output_dropout(decoder.output(attended))
    )
    return decoder.ffn_norm(
        hidden_states + decoder.ffn_dropout(decoder.feed_forward(hidden_states))
    )


def test_decoder_gives_eq_3_token_by_token():
    """Catches a wrong scale, heads mixed up when the head-major result is laid
    back out [S N H], a wrong causal or padding mask, or a wrong residual."""
    model = make_model(diffusion_steps=3).double().eval()
    context, real, batch_index, position_index = decoder_inputs(model, 4, 6)
    context = context.detach().double()
    steps = torch.tensor([2, 0, 1])
    with torch.no_grad():
        fast = model.decoder.decode_tokens(
            context, real, steps, batch_index, position_index
        )
        slow = token_by_token(
            model.decoder, context, real, steps, batch_index, position_index
        )
    assert fast.shape == (3, int(real.sum()), 16)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fast_dropout", [True, False])
@pytest.mark.parametrize(
    "rows, length, diffusion_steps",
    # attention weights of 2,880 elements (below fast_dropout.MIN_ELEMENTS:
    # its small-mask stream) and of more than 32,768 (its large-mask stream)
    [(4, 6, 3), (8, 12, 20)],
)
def test_training_keeps_the_step_major_dropout_stream(
    fast_dropout, rows, length, diffusion_steps
):
    """Catches attention dropout masks drawn in the head-major order (or cut
    from the step-major mask wrongly): the same seed must give the step-major
    computation's output, gradients and next random number."""
    model = make_model(
        fast_dropout=fast_dropout, diffusion_steps=diffusion_steps
    ).train()
    dropout_type = FastDropout if fast_dropout else nn.Dropout
    assert type(model.decoder.attn_dropout) is dropout_type
    assert model.decoder.attn_dropout.p > 0
    context, real, batch_index, position_index = decoder_inputs(model, rows, length)
    steps = torch.arange(model.num_steps)
    upstream = torch.randn(model.num_steps, batch_index.numel(), 16)

    results = []
    for decode in (model.decoder.decode_tokens, None):
        torch.manual_seed(7)
        if decode is None:
            output = step_major(
                model.decoder, context, real, steps, batch_index, position_index
            )
        else:
            output = decode(context, real, steps, batch_index, position_index)
        following = torch.rand(3)
        (gradient,) = torch.autograd.grad((output * upstream).sum(), context)
        results.append((output, gradient, following))
    (fast, fast_gradient, fast_next), (slow, slow_gradient, slow_next) = results
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_gradient, slow_gradient, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast_next, slow_next)


@pytest.mark.parametrize("workspace", [None, Workspace()])
def test_nt_xent_normalizes_as_f_normalize_does(workspace, monkeypatch):
    """Catches the radial term of the normalisation's backward pass dropped or
    applied where the length was clamped to eps (a zero token and one shorter
    than eps are in the batch), or the division by the length left out."""
    # pool even these small matrices, so the workspace's path is the one run
    monkeypatch.setattr("recbole_diffusion.model.nt_xent.POOL_MIN_BYTES", 0)
    torch.manual_seed(6)
    raw = torch.randn(2, 8, 5, dtype=torch.float64) * torch.rand(2, 8, 1) * 3
    raw[0, 1] = 0.0  # a zero token: F.normalize leaves it at zero
    raw[1, 6] *= NORMALIZE_EPS / raw[1, 6].norm() / 4  # shorter than eps
    raw.requires_grad_()
    weights = torch.rand(2, 8, dtype=torch.float64)
    fused = nt_xent(raw, 0.4, workspace, normalize=True)
    (fused_grad,) = torch.autograd.grad((fused * weights).sum(), raw)
    composed = nt_xent(F.normalize(raw, dim=-1), 0.4)
    (composed_grad,) = torch.autograd.grad((composed * weights).sum(), raw)
    torch.testing.assert_close(fused, composed, rtol=0, atol=1e-12)
    # the clamped tokens' gradients are dU / eps, about 1e12
    torch.testing.assert_close(fused_grad, composed_grad, rtol=1e-10, atol=1e-12)
    assert fused_grad[1, 6].abs().max() > 1e6
