"""Random draws injected into both implementations, in the order they ask.

The two codes draw their noise in the same order (the diffusion noise, then
per call the approximator's lambda, per reverse step its noise) but through
different calls (``torch.randn``, ``torch.randn_like``, ``torch.normal``,
numpy's ``choice`` for the steps). :class:`InjectedDraws` replaces torch's
normal and integer samplers for the duration of a call with a queue of
prepared standard normals and integer tensors, so that each side receives
exactly the same numbers; the shapes are checked as they are handed out.
"""

import torch

__all__ = ["DrawMismatch", "InjectedDraws"]


class DrawMismatch(AssertionError):
    """A draw asked for another shape than the one prepared, or too many draws."""


class InjectedDraws:
    """Context manager: ``torch.randn``, ``randn_like``, ``normal``, ``randint`` from queues.

    Args:
        normals: standard-normal tensors, handed out in order; ``torch.normal(
            mean, std)`` returns ``mean + std * next``.
        integers: integer tensors for ``torch.randint``, in order.

    After the block, :attr:`left` says how many of each were not consumed and
    :meth:`assert_consumed` raises unless all were (a check that each side
    drew exactly what it should). Contexts do not nest.
    """

    _NAMES = ("randn", "randn_like", "normal", "randint")

    def __init__(self, normals=(), integers=()):
        self.normals = list(normals)
        self.integers = list(integers)
        self._saved = {}

    @staticmethod
    def _next(queue, kind, shape):
        """The next prepared draw of ``kind``, checked against ``shape``."""
        if not queue:
            raise DrawMismatch(f"an extra {kind} draw of shape {tuple(shape)}")
        value = queue.pop(0)
        if tuple(value.shape) != tuple(shape):
            raise DrawMismatch(
                f"{kind} draw of shape {tuple(shape)}, prepared {tuple(value.shape)}"
            )
        return value

    def _next_normal(self, shape, dtype=None, device=None):
        value = self._next(self.normals, "normal", shape)
        return value.to(dtype=dtype or value.dtype, device=device or value.device)

    def _randn(self, *size, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        return self._next_normal(size, kwargs.get("dtype"), kwargs.get("device"))

    def _randn_like(self, tensor, **kwargs):
        return self._next_normal(tensor.shape, tensor.dtype, tensor.device)

    def _normal(self, mean, std, *args, **kwargs):
        mean = torch.as_tensor(mean)
        std = torch.as_tensor(std)
        shape = torch.broadcast_shapes(mean.shape, std.shape)
        return mean + std * self._next_normal(shape, mean.dtype, mean.device)

    def _randint(self, *args, **kwargs):
        size = kwargs.get("size", args[-1] if args else None)
        return self._next(self.integers, "integer", size).clone()

    @property
    def left(self):
        return {"normals": len(self.normals), "integers": len(self.integers)}

    def assert_consumed(self):
        """Raise :class:`DrawMismatch` unless every prepared draw was handed out."""
        if any(self.left.values()):
            raise DrawMismatch(f"draws prepared but not consumed: {self.left}")

    def __enter__(self):
        replacements = {
            "randn": self._randn,
            "randn_like": self._randn_like,
            "normal": self._normal,
            "randint": self._randint,
        }
        for name, function in replacements.items():
            self._saved[name] = getattr(torch, name)
            setattr(torch, name, function)
        return self

    def __exit__(self, *exc):
        for name, function in self._saved.items():
            setattr(torch, name, function)
        self._saved = {}
        return False
