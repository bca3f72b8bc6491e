"""The server's lifecycle tasks: flush read times, collect garbage, on a schedule;
compress what uploads stored raw (the local store, ``--background-level``).

Runs in a nursery the server owns. Each unit of work (a page of manifests marked,
a sweep batch, a few MiB of compaction or compression) is one hand-over to a worker
thread, with a short pause between, so requests keep flowing while a collection runs.
Compression yields to restores and uploads: while one runs it takes one step per
:data:`BUSY_PAUSE` (about a sixth of a core), so it never stops, and never competes.
"""

from __future__ import annotations

import logging

import trio

from cachesrv import malloc
from cachesrv.ingest.session import DEFER_HEADROOM
from cachesrv.lifecycle.gc import GcReport
from cachesrv.repository import Repository
from cachesrv.status import History
from cachesrv.store import GROUP_RAW, RELEASE_INTERVAL

log = logging.getLogger("cachesrv.gc")

FLUSH_INTERVAL = 5.0  # seconds between access-time flushes
STEP_PAUSE = 0.002  # seconds between two GC increments: the event loop's turn
COMPRESS_STEP = GROUP_RAW  # raw bytes compressed per hand-over (~10 ms at zstd -3, a group)
BUSY_PAUSE = 0.25  # seconds between two compression steps while requests do heavy work
IDLE_POLL = 1.0  # seconds between two looks for pending chunks when there were none
# While uploads or restores run, compression waits unless this many raw bytes are
# pending: a level-9 step holds ~15 MB and a core beside them (bench.many_files: an
# upload of 100,800 files, and the restore right after it). Past it, it goes on at the
# busy pace, so it never starves; uploads store raw only with as much room left (see
# cachesrv.ingest.session.DEFER_HEADROOM).
BUSY_BACKLOG = DEFER_HEADROOM


async def run(
    repo: Repository, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Until cancelled. The first collection waits for one interval (never at start-up);
    the first history point is taken at start-up, the next ones every history interval."""
    async with trio.open_nursery() as nursery:
        if repo.store.defers_compression:
            nursery.start_soon(compress_pending, repo)
        await nursery.start(_schedule, repo)
        task_status.started()


async def _schedule(
    repo: Repository, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    interval = repo.config.gc_interval
    task_status.started()
    next_gc = trio.current_time() + interval if interval > 0 else float("inf")
    history, next_sample = History(), trio.current_time()
    next_release = trio.current_time() + RELEASE_INTERVAL
    try:
        while True:
            wake = min(next_gc, next_sample, next_release)
            await trio.sleep(min(FLUSH_INTERVAL, max(wake - trio.current_time(), 0)))
            try:  # a catalog out of reach for a while must not stop the server
                await trio.to_thread.run_sync(repo.access.flush, repo.catalog)
                await trio.to_thread.run_sync(repo.announce_serving)
            except Exception:
                log.exception("flushing read times or announcing downloads failed; retried")
            if trio.current_time() >= next_sample:
                try:
                    await trio.to_thread.run_sync(history.sample, repo)
                except Exception:
                    log.exception("recording the status page's history failed")
                next_sample = trio.current_time() + repo.config.history_interval
            if trio.current_time() >= next_gc:
                try:
                    await collect(repo)
                except Exception:
                    log.exception("garbage collection failed; the next one retries")
                next_gc = trio.current_time() + interval
            if trio.current_time() >= next_release:
                # handles on storage that compaction or compression removed (here or in
                # another process)
                await trio.to_thread.run_sync(repo.store.release_unused)
                next_release = trio.current_time() + RELEASE_INTERVAL
    finally:
        with trio.CancelScope(shield=True):
            try:  # the last read times; a catalog out of reach loses them, not the exit
                await trio.to_thread.run_sync(repo.access.flush, repo.catalog)
            except Exception:
                log.exception("flushing read times at shutdown failed; they are lost")


async def collect(repo: Repository) -> GcReport:
    """One collection, an increment per worker-thread hand-over."""
    await trio.to_thread.run_sync(repo.access.flush, repo.catalog)
    collector = repo.collector()
    steps = collector.steps()
    sentinel = object()
    try:
        while await trio.to_thread.run_sync(next, steps, sentinel) is not sentinel:
            await trio.sleep(STEP_PAUSE)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(steps.close)
    report = collector.report
    if report.skipped:
        log.info("gc skipped: %s", report.skipped)
    else:
        repo.record_gc(report, collector.usage)
        log.info(
            "gc: %d chunks (%d bytes) swept, %d packs compacted, %d bytes reclaimed in %.2fs",
            report.swept_chunks,
            report.swept_bytes,
            report.compacted_packs,
            report.reclaimed_bytes,
            report.seconds,
        )
    return report


async def compress_pending(repo: Repository) -> None:
    """Until cancelled: the store's pending chunks compressed, a step per hand-over."""
    # uploads defer only with a background level; what an earlier run left pending is
    # compressed all the same
    level = repo.config.background_level or repo.config.compression_level

    def step() -> int:
        if repo.busy and repo.store.stats().pending_bytes < BUSY_BACKLOG:
            return 0  # requests' memory and cores first: this waits (see BUSY_BACKLOG)
        # while uploads add to the queue, only whole steps: its last group is not cut short
        full = repo.uploads_active > 0
        done = repo.store.compress_pending(level, COMPRESS_STEP, repo.config.group_level, full)
        if done:  # a step's buffers and zstd contexts (~20 MB at level 9) go back now
            malloc.give_back()
        return done

    while True:
        try:
            done = await trio.to_thread.run_sync(step)
        except Exception:
            log.exception("background compression failed; retried")
            done = 0
        if not done:
            await trio.sleep(IDLE_POLL)
        else:
            await trio.sleep(BUSY_PAUSE if repo.busy else STEP_PAUSE)
