"""glibc malloc settings for the serving process: memory freed after a large message goes back to the OS.

Why: grpc reads a request body into many buffers on its own threads before it can refuse it (over the
receive limit) or hand it to a handler. With glibc's defaults each thread may get its own heap arena,
and after the first large free the mmap threshold rises to 32 MiB, so later large buffers come from
those heaps and the freed space stays resident: 30 refused 32 MiB Decodes took a server from 94 to
157 MiB. With few arenas, a fixed low mmap threshold (large buffers are mmapped and unmapped on free)
and a low trim threshold, the same series left it at 94.5 MiB (RELIABILITY.md).

`mallopt` is called once at start-up, before the gRPC and onnxruntime threads exist; on a C library
without it (not glibc) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["tune_malloc", "ARENA_MAX", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

log = logging.getLogger("vae.service")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

ARENA_MAX = 2
MMAP_THRESHOLD = 64 * 1024
TRIM_THRESHOLD = 128 * 1024


def tune_malloc() -> bool:
    """Apply the settings above; True when glibc accepted all of them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, ARENA_MAX), (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    log.debug("malloc tuning %s (arenas %d, mmap threshold %d, trim threshold %d)",
              "applied" if ok else "partly refused", ARENA_MAX, MMAP_THRESHOLD, TRIM_THRESHOLD)
    return ok
