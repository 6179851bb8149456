"""CDDRec's NT-Xent over unit tokens, in few passes over its [S M M] matrix.

:func:`nt_xent` gives the same loss as ``F.cross_entropy`` over the logits
``T T^T / tau`` with the diagonal at -inf (token k's positive is its partner
k +- M/2), per token; CDDRec's ``fast_info_nce`` switch selects it.

- The logits are shifted by the constant ``1 / tau`` instead of each row's
  maximum (no pass for a maximum; see ``FAST_NT_XENT_SPAN``), the shift
  computed inside the product as one more column (no pass for it either:
  the NT-Xent term 1.35x faster at the ``cpu`` protocol's [20 640 640],
  1.10x at [20 2400 2400], measured A/B in one process beside a busy
  core), with ``log2(e)`` folded into the product so that ``E`` comes from
  torch's cheaper ``exp2`` (see :func:`_exponentials`), exponentiated in
  place, and the exponentials ``E`` are kept for
  the backward pass, which computes ``d T = (dL + dL^T) T / tau`` with
  ``dL = diag(g / s) E - g`` at the partners as one product of ``E`` with
  ``[T, (g / s) T]`` (``E`` read once, no [S M M] gradient).

In float64 it matches the cross-entropy form to 1e-12 (tested).

Reference:
    The NT-Xent (normalized temperature-scaled cross-entropy) loss of Chen et
    al., "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020, as CDDRec (Wang et al., PAKDD 2024) uses it
    for its in-view and cross-view terms.

Deviations:
    - None in the function: the same loss and gradient as the cross-entropy
      form, computed in fewer passes. It needs ``2 / tau <= FAST_NT_XENT_SPAN``
      (CDDRec takes the cross-entropy form otherwise) because the shift is the
      constant ``1 / tau``, not each row's maximum.

Memory. At the ``converged`` protocol's batch (128 sequences, about 4,600
tokens) ``E`` is [20 4634 4634], 1.7 GB, and a step computes two. Fresh
memory of that size comes from ``mmap`` (glibc keeps no freed block above
32 MiB), and touching it anew costs a page fault every 4 KiB: the product
into a fresh tensor took 4.4 s of CPU against 1.3 s into a reused one, and
the faults were 2.5 s of system time in each 8.9 s CDDRec step (measured,
one thread). A :class:`Workspace` therefore keeps these matrices: the
forward pass takes one, the backward pass gives it back, and the next step
reuses it. CDDRec empties its workspace when it is put in ``eval`` mode,
so evaluation gets the memory.

Computing ``E`` in cache-sized blocks of rows, with 2 MiB pages for its
memory, was tried before the workspace: within the noise of a shared
2-core machine (3.9 against 4.5 s for the forward of a [20 4634 4634]
matrix, training steps 11-18 s either way), so it was left out.
"""

import math

import torch

__all__ = [
    "FAST_NT_XENT_SPAN",
    "NORMALIZE_EPS",
    "POOL_MIN_BYTES",
    "Workspace",
    "nt_xent",
]

# The logits are shifted by 1 / tau, the largest a cosine over tau can be; a
# token's logits then lie in [-2 / tau, 0] after the shift (cosines in
# [-1, 1]), so exp cannot underflow while 2 / tau stays well under float32's
# 87 (exp(-60) is about 1e-26, a normal float). CDDRec takes the cross-entropy
# form above this span.
FAST_NT_XENT_SPAN = 60.0


# Matrices from this size on are kept in a Workspace: below it, glibc's heap
# keeps freed memory (recbole_diffusion.allocator raises its mmap threshold
# to this maximum), so a fresh tensor costs no page faults.
POOL_MIN_BYTES = 32 * 2**20

# exp(x) = 2 ** (x log2(e)); log(2) takes base-2 logits back to natural units
_LOG2_E = 1.0 / math.log(2.0)
_LN_2 = math.log(2.0)
# F.normalize's default: lengths are clamped to it before the division
NORMALIZE_EPS = 1e-12
# room for the next batch's slightly larger matrix in the same buffer
_HEADROOM = 1.125


class Workspace:
    """Buffers for the [S M M] exponentials, reused from step to step (CPU).

    :meth:`take` hands out a buffer no one holds (a new one if none is large
    enough); :meth:`give_back` returns it once its backward pass is done. At
    most ``max_free`` buffers are kept, the largest, of one dtype. Copies and
    pickles of a workspace are empty: the buffers are scratch memory, not
    state. One workspace serves one thread (a model trains on one). Under
    activation checkpointing only the recomputation in backward reuses
    buffers: the first forward's matrices are freed, as checkpointing wants.
    """

    def __init__(self, max_free=2):
        self.max_free = max_free
        self._free = []  # flat tensors nobody holds

    def take(self, shape, dtype, device):
        """``(buffer, view)``: ``view`` of ``shape`` on a flat ``buffer``;
        ``buffer`` is None where the matrix is not pooled (then ``view`` is a
        fresh tensor)."""
        numel = 1
        for size in shape:
            numel *= size
        itemsize = torch.empty((), dtype=dtype).element_size()
        if device.type != "cpu" or numel * itemsize < POOL_MIN_BYTES:
            return None, torch.empty(shape, dtype=dtype, device=device)
        fitting = [
            buffer
            for buffer in self._free
            if buffer.dtype == dtype and buffer.numel() >= numel
        ]
        if fitting:
            buffer = min(fitting, key=torch.Tensor.numel)
            self._free = [free for free in self._free if free is not buffer]
        else:
            # the kept buffers of this dtype are too small: release them
            # first, so that memory peaks at the new size, not at both
            self._free = [free for free in self._free if free.dtype != dtype]
            buffer = torch.empty(int(numel * _HEADROOM), dtype=dtype, device=device)
        return buffer, buffer[:numel].view(shape)

    def give_back(self, buffer):
        """Return a buffer from :meth:`take`; its contents may be overwritten."""
        # only one dtype is kept: a model trains in one, and buffers of an
        # earlier dtype would otherwise crowd out every new one
        self._free = [free for free in self._free if free.dtype == buffer.dtype]
        self._free.append(buffer)
        if len(self._free) > self.max_free:
            # by identity: list.remove would compare tensors with ==
            smallest = min(self._free, key=torch.Tensor.numel)
            self._free = [free for free in self._free if free is not smallest]

    def clear(self):
        """Drop every kept buffer (their memory goes back to the system)."""
        self._free = []

    @property
    def kept_bytes(self):
        return sum(buffer.numel() * buffer.element_size() for buffer in self._free)

    def __getstate__(self):  # copy.deepcopy and pickle
        return {"max_free": self.max_free, "_free": []}


def _operands(tokens, tau, shift, norms):
    """The product's two sides, each written in one pass over ``tokens``.

    ``left`` [S M H+1] is ``[U log2(e) / tau, -shift log2(e)]`` and ``right``
    ``[U, 1]``, with ``U`` the tokens divided by ``norms`` [S M 1] (or the
    tokens themselves where ``norms`` is None): their product is the shifted
    logits in base 2 (see :func:`_exponentials`).
    """
    steps, count, hidden = tokens.shape
    left = tokens.new_empty(steps, count, hidden + 1)
    right = tokens.new_empty(steps, count, hidden + 1)
    if norms is None:
        right[..., :hidden].copy_(tokens)
    else:
        torch.div(tokens, norms, out=right[..., :hidden])
    torch.mul(right[..., :hidden], _LOG2_E / tau, out=left[..., :hidden])
    left[..., hidden].fill_(-shift * _LOG2_E)
    right[..., hidden].fill_(1.0)
    return left, right


def _exponentials(left, right, out):
    """(E [S M M], sums [S M], shifted positive logits [S M]) in one batched
    product of the two sides from :func:`_operands`, ``E`` written into ``out``.

    The shift rides in the product: ``[T / tau, -shift] [T, 1]^T`` is
    ``T T^T / tau - shift``, one more column for the product (1/64 more
    arithmetic at H 64) instead of one more pass over the [S M M] matrix.
    The left side also carries ``log2(e)``, so that the product holds the
    logits in base 2 and ``E`` is ``exp2`` of it: the same values, and torch's
    ``exp2`` costs 0.59x its ``exp`` here (6.3 against 10.6 ms over
    [20 640 640], one thread, AVX2), with no pass to rescale.
    """
    half = left.shape[1] // 2
    shifted = torch.bmm(left, right.transpose(1, 2), out=out)  # [S M M], base 2
    # each token's positive logit, read off the matrix: (k, k + M/2) lie
    # on the diagonal at offset M/2, (k + M/2, k) at -M/2 (cat copies them
    # before the matrix is overwritten); back to natural units
    positive = torch.cat(
        [shifted.diagonal(half, 1, 2), shifted.diagonal(-half, 1, 2)], dim=1
    ).mul_(_LN_2)  # [S M]
    shifted.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # no self-pairs
    exps = shifted.exp2_()  # in place: the logits are not kept
    return exps, exps.sum(dim=-1), positive


class _NTXent(torch.autograd.Function):
    """NT-Xent of tokens [S M H] (token k's partner is k +- M/2), per token;
    unit tokens, or any with ``normalize`` (see :func:`nt_xent`)."""

    @staticmethod
    def forward(ctx, tokens, tau, workspace, forward_only, normalize):
        shift = 1.0 / tau  # the largest logit a unit token can have
        steps, count, _ = tokens.shape
        norms = too_short = None
        if normalize:  # F.normalize's x / max(|x|, eps)
            lengths = tokens.norm(2, -1, keepdim=True)  # [S M 1]
            norms = lengths.clamp_min(NORMALIZE_EPS)
            too_short = lengths < NORMALIZE_EPS
        left, right = _operands(tokens, tau, shift, norms)
        buffer, out = (None, None)
        if workspace is not None:
            buffer, out = workspace.take(
                (steps, count, count), tokens.dtype, tokens.device
            )
        exps, sums, positive = _exponentials(left, right, out)
        ctx.tau, ctx.normalize = tau, normalize
        # not the buffer itself: under activation checkpointing this graph
        # must not keep E alive (backward finds it through the saved E)
        ctx.workspace, ctx.pooled, ctx.released = workspace, buffer is not None, False
        if forward_only:  # no backward: E is done with
            if buffer is not None:
                workspace.give_back(buffer)
            ctx.released = True
        elif normalize:
            # right's first H columns are the unit tokens
            ctx.save_for_backward(right, exps, sums, norms, too_short)
        else:
            ctx.save_for_backward(tokens, exps, sums)
        return sums.log() - positive  # [S M]; both sides shifted alike

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph: the backward below is not
            raise RuntimeError("nt_xent: second-order gradients are not supported")
        if ctx.released:
            # its buffer went back to the workspace: E may be overwritten
            raise RuntimeError(
                "nt_xent: a second backward pass through the same graph is not "
                "supported (its workspace buffer was reused)"
            )
        if ctx.normalize:
            right, exps, sums, norms, too_short = ctx.saved_tensors
            tokens = right[..., :-1]  # the unit tokens U
        else:
            tokens, exps, sums = ctx.saved_tensors
        half, hidden = tokens.shape[1] // 2, tokens.shape[2]
        rate = (grad / sums).unsqueeze(-1) / ctx.tau  # [S M 1], 1 / tau folded in
        # E T and E (rate T) in one product: E is read once
        products = torch.bmm(exps, torch.cat([tokens, rate * tokens], dim=-1))
        result = torch.addcmul(products[..., hidden:], rate, products[..., :hidden])
        # the positive logits' part: each token's partner, with both losses'
        # weights (rolling by M/2 swaps the two halves)
        pair_grad = (grad + grad.roll(half, dims=1)).unsqueeze(-1)  # [S M 1]
        result.addcmul_(pair_grad, tokens.roll(half, dims=1), value=-1.0 / ctx.tau)
        if ctx.pooled:
            # the whole flat buffer that E is a view of
            buffer = exps.new_empty(0).set_(exps.untyped_storage())
            del exps, products
            ctx.workspace.give_back(buffer)
            ctx.released = True
        if ctx.normalize:
            # through U = x / max(|x|, eps): (dU - U (U . dU)) / |x|, and
            # dU / eps where the norm was clamped (no gradient reaches it)
            radial = torch.linalg.vecdot(tokens, result).unsqueeze(-1)  # [S M 1]
            radial.masked_fill_(too_short, 0.0)
            result.addcmul_(tokens, radial, value=-1.0).div_(norms)
        return result, None, None, None, None


def nt_xent(tokens, tau, workspace=None, normalize=False):
    """NT-Xent per token of unit tokens [S M H] at temperature ``tau`` -> [S M].

    Token k's positive is its partner k +- M/2, its negatives the other
    M - 2 tokens of the same step. Needs ``2 / tau <= FAST_NT_XENT_SPAN``.
    ``normalize``: the tokens are any vectors and are scaled to unit length
    first, as ``F.normalize(tokens, dim=-1)`` would (the same values and
    gradients, with fewer passes over the tokens: the division writes the
    product's operand directly, and the backward pass through it is three
    passes instead of autograd's chain of the norm, the clamp and the
    division).
    With a :class:`Workspace`, its [S M M] matrix lives in the workspace's
    memory (reused at the next call), and the graph allows one backward pass.
    First-order gradients only (``create_graph=True`` raises).
    """
    # without a backward pass to come, forward gives its buffer back itself
    forward_only = not (torch.is_grad_enabled() and tokens.requires_grad)
    return _NTXent.apply(tokens, tau, workspace, forward_only, normalize)
