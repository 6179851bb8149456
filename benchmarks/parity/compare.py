"""What every equivalence check shares: sizes, inputs, one comparison."""

import torch

from benchmarks.parity.mapping import max_abs_diff

__all__ = ["SIZES", "TARGET", "comparison", "histories", "normal"]

# Both implementations are within 1e-4 of each other on every compared
# quantity, in float32, or the record says why not.
TARGET = 1e-4

# Tiny sizes: the checks run in seconds on one CPU thread.
SIZES = {
    "n_items": 40,  # ids 0..39, 0 the padding
    "hidden_size": 16,
    "n_heads": 4,
    "n_layers": 2,
    "steps": 8,
    "length": 6,
    "batch": 4,
}


def comparison(quantity, ours, theirs, note, expected_equal=True):
    """One compared quantity: the largest absolute difference and its context.

    ``scale`` is the largest absolute value on the reference's side, so a
    difference can be read against the size of what is compared;
    ``top10_identical`` (for scores) says whether the two rank the same ten
    items first in every row.
    """
    ours, theirs = torch.as_tensor(ours).detach(), torch.as_tensor(theirs).detach()
    result = {
        "quantity": quantity,
        "max_abs_diff": max_abs_diff(ours, theirs),
        "scale": float(theirs.double().abs().max()) if theirs.numel() else 0.0,
        "expected_equal": bool(expected_equal),
        "note": note,
    }
    if ours.dim() == 2 and ours.shape[1] >= 10:
        top_ours = ours.topk(10, dim=1).indices
        top_theirs = theirs.topk(10, dim=1).indices
        result["top10_identical"] = bool((top_ours == top_theirs).all())
    return result


def histories(generator, batch, length, n_items):
    """Full-length histories of items 1..n_items-1 and a target per row.

    Without padding the left-padded layout of the reference codes and the
    right-padded one of RecBole are the same array, and the padding-mask
    deviations (keys vs queries) have nothing to act on.
    """
    seq = torch.randint(1, n_items, (batch, length), generator=generator)
    target = torch.randint(1, n_items, (batch,), generator=generator)
    return seq, target


def normal(generator, *shape):
    """Standard normals from ``generator`` (never torch's global one)."""
    return torch.randn(*shape, generator=generator)
