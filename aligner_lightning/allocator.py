"""Keep the memory a training pass frees, for the next pass, instead of handing it back to the OS.

Each epoch allocates and frees the same large tensors (the rollout's, then the minibatches' activations and
gradients). With glibc's defaults, ``free`` returns the heap's free top to the OS beyond the trim threshold,
and blocks above the mmap threshold get their own mapping, unmapped on ``free`` (glibc raises both thresholds
as it sees large blocks freed, but only up to 32 MiB and 64 MiB). The next pass faults the same pages in again:
one minor page fault per 4 KB, paid in system time.

``keep_freed_memory`` turns trimming off and serves blocks up to 32 MiB (the largest mmap threshold that older
glibc accept on 64-bit) from the heap, so freed memory is reused. The process's resident memory then stays at
its high-water mark, which the next pass reaches again anyway. ``ALIGNER_MALLOPT=0`` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "ALIGNER_MALLOPT"
M_TRIM_THRESHOLD = -1  # <malloc.h>; setting it (or M_MMAP_THRESHOLD) also fixes the thresholds (no dynamic ones)
M_MMAP_THRESHOLD = -3
NEVER_TRIM = -1  # read as an unsigned size: free() never returns the heap's top to the OS
MMAP_THRESHOLD = 32 << 20  # the most older glibc accept on 64-bit; larger requests are still mmap-ed


def _glibc() -> ctypes.CDLL | None:
    """The process's C library, if it is glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):  # e.g. "glibc 2.36"; unset on musl
            return None
        return ctypes.CDLL(None)  # the libc already loaded in this process, not a second copy
    except (ValueError, OSError):
        return None


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory (see the module's docstring). Returns whether both settings took
    effect; ``False`` without glibc or with ``ALIGNER_MALLOPT=0``. Call it before the large allocations."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success, 0 for a value out of range.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
