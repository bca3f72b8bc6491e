"""Keep glibc from holding on to freed buffers.

glibc raises its mmap threshold after large blocks are freed, so the MiB-sized
buffers of uploads and restores end up on the heap and fragment it; with many
worker threads it also opens an arena per thread. Both made a server serving
16 restores hold ~60 MB more than it used. A fixed threshold returns big buffers
to the system on free, and two arenas are plenty for a trio process.

The server process is the exception to the low threshold: it receives every
restore's bytes in frames of up to 1 MiB (cachesrv.restore.workers) and hands
them to hypercorn. Below the frame size, each frame was an ``mmap`` of fresh
pages, zero-filled by page faults, and an ``munmap``: that doubled the server's
CPU per GB restored and halved plain GET speed (bench, Go cache: ~580 -> ~1,300
MB/s; 16 restores at once peaked 2 MB higher). So the server keeps frames on
the heap (threshold above the frame size), and a trim threshold above a few
frames keeps glibc from giving the heap's top back and faulting it in again on
every frame. The hot spans the server reads itself where a connection cannot send
files (``bytes`` of 1 MiB, see RestorePool._stream_hot) need the same: at a 1 MiB
threshold a hot GET of the Go cache cost the server 0.82 core-seconds per GB instead
of 0.41.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
# the server's: above a restore frame (1 MiB and its header), and room for a few of them
SERVER_MMAP_THRESHOLD = 4 << 20
SERVER_TRIM_THRESHOLD = 8 << 20


def bound_heap(
    mmap_threshold: int = 128 * 1024, arenas: int = 2, trim_threshold: int | None = None
) -> bool:
    """Apply the settings; False where the C library is not glibc. ``trim_threshold``:
    free bytes at the heap's top kept rather than returned (None: glibc's 128 KiB)."""
    mallopt = getattr(_libc(), "mallopt", None)  # None: no C library found, or not glibc
    if mallopt is None:
        return False
    applied = [mallopt(M_MMAP_THRESHOLD, mmap_threshold), mallopt(M_ARENA_MAX, arenas)]
    if trim_threshold is not None:
        applied.append(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return all(applied)


def give_back() -> None:
    """Return the heap's free memory to the system (glibc's ``malloc_trim``): a worker
    process calls it when a large piece of work ended. After an upload of the Go cache
    the ingest worker kept ~18 MB it no longer used."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    try:
        return None if name is None else ctypes.CDLL(name)
    except OSError:
        return None
