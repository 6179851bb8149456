"""glibc's allocator told to keep freed memory for the next training step.

A training step allocates and frees many tensors of a few megabytes. By
default glibc returns such blocks to the system (``mmap`` above a threshold
that starts at 128 KiB, and trimming the heap's top above 128 KiB free), so
each step pays the page faults of touching them anew: about 430,000 minor
page faults in 23 DiffuRec steps under the benchmarks' ``cpu`` protocol, and
a few percent to 20% of the step. :func:`keep_freed_memory` raises the mmap
threshold to glibc's maximum (32 MiB) and keeps up to 1 GiB free at the top of
the heap, which halves the page faults. The mmap threshold must be set too:
setting any of these turns off glibc's dynamic mmap threshold, and the trim
threshold alone would leave it at 128 KiB, every block a fresh mapping (3x
slower steps, measured).

Only glibc has ``mallopt``; elsewhere (macOS, musl, Windows) this does nothing.
The trainers call it when ``malloc_keep_memory`` is on (the default).
"""

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 2**30
_TOP_PAD = 64 * 2**20

_applied = None


def keep_freed_memory():
    """Apply the settings once per process; True when glibc accepted them."""
    global _applied
    if _applied is None:
        _applied = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        # all three: setting any one freezes glibc's dynamic mmap threshold
        _applied = bool(
            mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            and mallopt(_M_TOP_PAD, _TOP_PAD)
        )
    return _applied
