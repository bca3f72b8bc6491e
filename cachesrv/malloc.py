"""Keep glibc from holding on to freed buffers.

glibc raises its mmap threshold after large blocks are freed, so the MiB-sized
buffers of uploads and restores end up on the heap and fragment it; with many
worker threads it also opens an arena per thread. Both made a server serving
16 restores hold ~60 MB more than it used. A fixed threshold returns big buffers
to the system on free, and two arenas are plenty for a trio process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3


def bound_heap(mmap_threshold: int = 128 * 1024, arenas: int = 2) -> bool:
    """Apply the settings; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_ARENA_MAX, arenas))


def give_back() -> None:
    """Return the heap's free memory to the system (glibc's ``malloc_trim``): a worker
    process calls it when a large piece of work ended. After an upload of the Go cache
    the ingest worker kept ~18 MB it no longer used."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass
