"""Cheaper forms of a few layers for training on the CPU, same maths.

Each is on by default and has a switch; the models apply them with
:func:`use_fast_layers` at the end of their ``__init__``.

``fast_dropout`` (dropout masks). On the CPU, torch draws a dropout mask one
Mersenne-Twister number per element (``aten::bernoulli_``): about 11 ns an
element at one thread, 28 to 30% of a DiffuRec training step under the
benchmarks' ``cpu`` protocol. :class:`FastDropout` draws the mask from
numpy's SFC64 generator instead, 16 bits per element from one 64-bit draw per
four elements, compares and converts in numpy, and applies it as torch's own
dropout does (``x * mask / (1 - p)``, the gradient ``grad * mask / (1 - p)``):
forward and backward about 4x faster (3.3 ms against 13 ms for 1.3 million
elements at one thread).

- Reproducible under a seed: each call starts a new SFC64 stream from
  torch's global generator, which RecBole's ``init_seed`` seeds and the
  benchmarks' resume state restores. The streams differ from torch's own
  dropout, so a run is the same only with the same setting.
- How a call's stream starts depends on the tensor's size. From
  ``MIN_ELEMENTS`` elements on, one number drawn from torch seeds the stream
  through numpy's ``SeedSequence`` (about 45 us with the first draws,
  negligible beside such a mask; the committed benchmark tables were made
  with these streams, so they stay). Below it, four 63-bit words drawn from
  torch are the SFC64 state itself (about 3 us): torch's dropout of an ADRec
  activation under the ``cpu`` protocol (20,480 elements) costs about 180 us
  of ``bernoulli_``, this path about 20 us.
- The drop probability is ``p`` rounded to a multiple of 1/65536 (0.1 becomes
  0.10000610); the scale uses that rounded value, so the output stays
  unbiased.
- Only CPU floating-point tensors take this path; on any other device, and
  for ``p`` of 0 or in ``eval`` mode, it is torch's dropout (or the
  identity).

``fast_gelu`` (GELU). torch's tanh-approximated GELU runs its tanh at about
3 ns an element on the CPU; ``0.5 x (1 + tanh(z))`` equals ``x sigmoid(2z)``,
whose sigmoid is 3.5x cheaper, so :class:`TanhGELU` computes that, with its
derivative written out for the backward pass (2.2x faster forward and
backward together). RecBole's ``FeedForward`` computes the exact GELU as five
separate operations (``x * 0.5 * (1 + erf(x / sqrt 2))``); it becomes torch's
fused ``F.gelu``, the same function. Both agree with the original to float
rounding (about 1e-7).

``fast_cross_entropy`` (cross-entropy over all items). ``F.cross_entropy``
keeps ``log_softmax`` of the [R N] logits; its backward fills an [R N] zero
tensor for the targets, then recomputes the exponential of every entry. On
this kind of CPU an exponential costs about 1 ns, as much as the rest of the
loss together. :class:`CrossEntropyLoss` keeps the softmax ``P`` instead: the
loss is ``max_j x_ij - log max_j P_ij - x_i,target`` (the softmax's largest
entry is ``exp(0) / sum``, so this is the log-sum-exp, and it cannot
underflow), and the gradient ``(P - onehot) / R`` is written into ``P``
itself: one exponential per entry instead of two, no zero fill. Mean
reduction over class indices only; anything else (weights, label smoothing,
``ignore_index`` in use, probabilities as targets, half precision, a device
other than the CPU) is torch's loss.
"""

import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward
from torch import nn

from recbole_diffusion.utils import config_value

__all__ = [
    "MIN_ELEMENTS",
    "CrossEntropyLoss",
    "FastDropout",
    "TanhGELU",
    "attention",
    "cross_entropy",
    "dropout_part",
    "fast_dropout",
    "tanh_gelu",
    "use_fast_layers",
]

_LEVELS = 65536  # the mask compares 16-bit integers
# From this size on, a mask's stream is seeded through numpy's SeedSequence
# (see the module docstring); below it, its state comes straight from torch.
MIN_ELEMENTS = 32768
_SEED_BOUND = 2**63 - 1
_SFC64_STATE_WORDS = 4
# one SFC64 per thread, its state replaced at every call below MIN_ELEMENTS
_small_streams = threading.local()


def _random_words(count, elements):
    """``count`` uniform 64-bit words from a new stream seeded by torch."""
    if elements >= MIN_ELEMENTS:
        seed = int(torch.randint(0, _SEED_BOUND, (1,), dtype=torch.int64))
        return np.random.SFC64(seed).random_raw(count)
    stream = getattr(_small_streams, "generator", None)
    if stream is None:
        stream = _small_streams.generator = np.random.SFC64(0)
    # random_() on int64 draws 63 uniform bits per word: a random state, which
    # needs none of the warm-up that seeding from one integer does
    words = torch.empty(_SFC64_STATE_WORDS, dtype=torch.int64).random_()
    stream.state = {
        "bit_generator": "SFC64",
        "state": {"state": words.numpy().view(np.uint64)},
        "has_uint32": 0,
        "uinteger": 0,
    }
    return stream.random_raw(count)


# numpy builds the mask: its comparison and conversion are about 10x faster
# than torch's on int16 at one thread (0.2 ms against 1.7 ms for 1.3 million
# elements)
_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def _keep_mask(shape, drop_levels, dtype):
    """Float mask of ``shape``: 0 with probability ``drop_levels / 65536``,
    else ``65536 / (65536 - drop_levels)`` (1 / (1 - p), p as rounded)."""
    count = math.prod(shape)
    words = _random_words((count + 3) // 4, count)  # uint64
    halves = words.view(np.int16)[:count]  # uniform on int16
    keep = halves >= drop_levels - _LEVELS // 2
    scale = _LEVELS / (_LEVELS - drop_levels)
    numpy_dtype = _NUMPY_FLOATS.get(dtype)
    if numpy_dtype is None:  # half precision: torch converts
        return torch.from_numpy(keep).view(shape).to(dtype).mul_(scale)
    mask = keep.astype(numpy_dtype)
    mask *= numpy_dtype(scale)
    return torch.from_numpy(mask).view(shape)


def fast_dropout(x, p, training=True, whole=None):
    """Functional form of :class:`FastDropout`.

    ``whole``: ``(shape, take)`` when ``x`` is the part ``take(t)`` of a tensor
    ``t`` of ``shape`` whose other entries are not computed. The mask is drawn
    for the whole ``shape`` and cut by ``take``, so the result is
    ``take(fast_dropout(t))`` and the same random numbers are consumed (a
    model that computes only the entries it reads keeps its random stream).
    Where torch's dropout serves (another device), ``x`` alone is dropped out.
    """
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point() or p >= 1:
        return F.dropout(x, p, training=True)
    drop_levels = round(p * _LEVELS)
    if drop_levels == 0:
        return x
    if whole is None:
        mask = _keep_mask(x.shape, drop_levels, x.dtype)
    else:
        shape, take = whole
        mask = take(_keep_mask(shape, drop_levels, x.dtype))
    # autograd saves only the mask (it needs no gradient): backward is
    # grad * mask, as for torch's dropout
    return x * mask


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask comes from numpy's SFC64 (see the module)."""

    def forward(self, x, whole=None):
        return fast_dropout(x, self.p, self.training, whole)


def dropout_part(dropout, x, whole):
    """``dropout`` (an ``nn.Dropout``) of ``x``, the part of a larger tensor
    that ``whole`` describes (see :func:`fast_dropout`); torch's own dropout
    draws for ``x`` alone."""
    if isinstance(dropout, FastDropout):
        return dropout(x, whole)
    return dropout(x)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


# The sigmoid's argument is floored: below about -87 its value is a denormal
# float32 (torch's tanh form saturates to exactly 0 there instead), and
# arithmetic on denormals is many times slower on x86. At -60 the gate is
# 8.7e-27, so the output differs from the exact form by under 1e-24.
_GATE_FLOOR = -60.0


def _gate(x):
    """``sigmoid(2z)``, ``z = sqrt(2/pi) (x + 0.044715 x^3)``, floored (see above).

    One new tensor, the rest in place: each temporary of a large activation
    costs a pass over fresh memory.
    """
    gate = x * x
    gate.mul_(_CUBIC).add_(1.0).mul_(x).mul_(2.0 * _SQRT_2_OVER_PI)
    return gate.clamp_(min=_GATE_FLOOR).sigmoid_()


class _TanhGELUFunction(torch.autograd.Function):
    """``0.5 x (1 + tanh(z))`` as ``x sigmoid(2z)``, ``z = sqrt(2/pi) (x + 0.044715 x^3)``."""

    @staticmethod
    def forward(ctx, x):
        gate = _gate(x)
        ctx.save_for_backward(x, gate)
        return x * gate

    @staticmethod
    def backward(ctx, grad_output):
        x, gate = ctx.saved_tensors
        # d/dx [x s(2z)] = s + x s (1 - s) 2 dz/dx, dz/dx = sqrt(2/pi) (1 + 3c x^2)
        derivative = x * x
        derivative.mul_(3.0 * _CUBIC).add_(1.0).mul_(2.0 * _SQRT_2_OVER_PI)
        derivative.mul_(x).mul_(gate).mul_(1.0 - gate).add_(gate)
        return derivative.mul_(grad_output)


def tanh_gelu(x):
    """tanh-approximated GELU, :class:`TanhGELU`'s functional form."""
    if x.requires_grad and torch.is_grad_enabled():
        return _TanhGELUFunction.apply(x)
    return x * _gate(x)


class TanhGELU(nn.GELU):
    """``nn.GELU(approximate="tanh")``, computed through a sigmoid (see module)."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x):
        return tanh_gelu(x)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``logits`` [R N] at class indices ``targets`` [R]."""

    @staticmethod
    def forward(ctx, logits, targets):
        probs = torch.softmax(logits, dim=-1)
        # log sum_j exp(x_ij) = max_j x_ij - log max_j P_ij: the largest entry
        # of the softmax is exp(0) / sum, never smaller than 1 / N
        log_sum_exp = logits.amax(dim=-1) - probs.amax(dim=-1).log_()
        target_logits = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(probs, targets)
        return (log_sum_exp - target_logits).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        probs, targets = ctx.saved_tensors
        # (P - onehot) * g / R, written into P: backward runs once (a second
        # one would find the saved tensor modified and raise)
        rows = probs.shape[0]
        scale = grad_output / rows
        probs.mul_(scale)
        probs.scatter_add_(1, targets.unsqueeze(1), (-scale).expand(rows, 1))
        return probs, None


def cross_entropy(logits, targets, fast=True):
    """``F.cross_entropy(logits, targets)`` (mean); with ``fast``, on the CPU in
    float32/float64 with [R N] logits and R int64 class indices, through the
    kept softmax (see module). Anything else is torch's loss (and its errors).
    """
    if (
        fast
        and logits.device.type == "cpu"
        and logits.dtype in (torch.float32, torch.float64)
        and logits.dim() == 2
        and targets.dim() == 1
        and targets.dtype == torch.int64
        and targets.shape[0] == logits.shape[0] > 0
    ):
        return _SoftmaxCrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits, targets)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss()`` through :func:`cross_entropy` (see module).

    Only a loss with the defaults (mean, no weights, no label smoothing)
    becomes this; a target of ``ignore_index`` (-100) is out of range for the
    kept softmax and raises, as a target past N does.
    """

    def forward(self, logits, targets):
        return cross_entropy(logits, targets)


_causal_biases = {}


def _causal_bias(length, key_length, dtype, device):
    """[length key_length]: 0 where query i may attend to key j (j <= i), else
    -inf (SDPA's ``is_causal``: the top-left triangle). Built once per shape."""
    key = (length, key_length, dtype, device)
    bias = _causal_biases.get(key)
    if bias is None:
        allowed = torch.ones(length, key_length, dtype=torch.bool, device=device)
        bias = torch.zeros(length, key_length, dtype=dtype, device=device)
        bias.masked_fill_(~allowed.tril_(), float("-inf"))
        _causal_biases[key] = bias
    return bias


def attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    fast=False,
    is_causal=False,
    dropout_whole=None,
):
    """``F.scaled_dot_product_attention``; with ``fast`` and dropout on the CPU,
    the same attention written out so that its dropout is :func:`fast_dropout`.

    ``attn_mask`` is boolean, True where a query may attend (as for SDPA);
    ``is_causal`` (instead of a mask) lets query i attend to keys 0..i.
    With dropout torch's CPU attention takes this same math path (matrix
    products, softmax, dropout), so writing it out costs nothing extra.
    ``dropout_whole``: when the queries are a part of a longer query sequence,
    the attention weights' ``whole`` for :func:`fast_dropout`.
    """
    if not (fast and dropout_p > 0 and query.device.type == "cpu"):
        return F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
        )
    scale = query.shape[-1] ** -0.5
    if is_causal and query.shape[:-2] != key.shape[:-2]:
        # broadcast batch dimensions: the boolean mask below handles them
        attn_mask = torch.ones(
            query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device
        ).tril_()
        is_causal = False
    if is_causal:
        # the mask as an additive bias in the scores' product: one operation
        # for product, scale and mask (each a pass, and a backward node)
        length, key_length = query.shape[-2], key.shape[-2]
        batch_shape = query.shape[:-2]
        scores = torch.baddbmm(
            _causal_bias(length, key_length, query.dtype, query.device),
            query.reshape(-1, length, query.shape[-1]),
            key.reshape(-1, key_length, key.shape[-1]).transpose(1, 2),
            alpha=scale,
        ).view(*batch_shape, length, key_length)
    else:
        scores = query @ key.transpose(-2, -1) * scale
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = fast_dropout(
        torch.softmax(scores, dim=-1), dropout_p, whole=dropout_whole
    )
    return weights @ value


def _has_default_settings(loss):
    return (
        loss.weight is None
        and loss.reduction == "mean"
        and loss.label_smoothing == 0.0
        and loss.ignore_index == -100
    )


def use_fast_layers(model, config):
    """Swap ``model``'s layers for their fast forms, in place, as ``config`` says.

    ``fast_dropout``: every ``nn.Dropout`` (RecBole's layers included) becomes
    :class:`FastDropout` with the same ``p``. ``fast_gelu``: every
    ``nn.GELU(approximate="tanh")`` becomes :class:`TanhGELU`, and RecBole's
    ``FeedForward`` with ``hidden_act: gelu`` uses ``F.gelu``.
    ``fast_cross_entropy``: every default ``nn.CrossEntropyLoss`` becomes
    :class:`CrossEntropyLoss`; modules with a ``fast_cross_entropy``
    attribute (those that call :func:`cross_entropy`) get the switch.
    Parameters and state dict are unchanged. Returns the number of modules
    changed.
    """

    changed = 0
    fast_dropout_on = bool(config_value(config, "fast_dropout", True))
    fast_gelu_on = bool(config_value(config, "fast_gelu", True))
    fast_cross_entropy_on = bool(config_value(config, "fast_cross_entropy", True))
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if fast_dropout_on and type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
                changed += 1
            elif (
                fast_gelu_on and type(child) is nn.GELU and child.approximate == "tanh"
            ):
                setattr(parent, name, TanhGELU())
                changed += 1
            elif (
                fast_cross_entropy_on
                and type(child) is nn.CrossEntropyLoss
                and _has_default_settings(child)
            ):
                setattr(parent, name, CrossEntropyLoss())
                changed += 1
        if (
            fast_gelu_on
            and isinstance(parent, FeedForward)
            and getattr(parent.intermediate_act_fn, "__func__", None)
            is FeedForward.gelu
        ):
            parent.intermediate_act_fn = F.gelu
            changed += 1
        if hasattr(parent, "fast_cross_entropy"):
            parent.fast_cross_entropy = fast_cross_entropy_on
        if hasattr(parent, "fast_attention_dropout"):
            # attention modules that call attention(..., fast=...)
            parent.fast_attention_dropout = fast_dropout_on
    return changed
