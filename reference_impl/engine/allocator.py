"""The host allocator of the reference's training process (``reference.keep_freed_memory``).

A training step allocates and frees the same large activation and gradient tensors every iteration.
glibc's malloc serves each one above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it with ``munmap``, so every iteration pays a page fault per 4 KiB page it touches again (0.5
to 2.6 million faults per step of ResNet-50-FPN at 800 px on the CPU, measured with getrusage). With
the setting on, freed memory stays in the heap and is reused: the process keeps its peak, the
arithmetic is untouched. glibc only: elsewhere the setting warns and does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import warnings

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}  # glibc's own
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}


def keep_freed_memory(enabled: bool = True) -> bool:
    """Keep freed memory for reuse (``enabled``) or give it back as glibc does by default; True when
    the allocator took the setting."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError) as e:
        warnings.warn(
            f"reference.keep_freed_memory: no glibc malloc here ({e}); the allocator is left as it is",
            stacklevel=2,
        )
        return False
    ok = all(mallopt(option, value) == 1 for option, value in (KEEP if enabled else DEFAULTS).items())
    if not enabled:
        trim(0)
    if not ok:
        warnings.warn(
            "reference.keep_freed_memory: glibc's mallopt refused the setting; the allocator is left as is",
            stacklevel=2,
        )
    return ok
