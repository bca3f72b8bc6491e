"""The server's lifecycle task: flush read times, collect garbage, on a schedule.

Runs in a nursery the server owns. Each unit of work (a page of manifests marked,
a sweep batch, a few MiB of compaction) is one hand-over to a worker thread, with a
short pause between, so requests keep flowing while a collection runs.
"""

from __future__ import annotations

import logging

import trio

from cachesrv.lifecycle.gc import GcReport
from cachesrv.repository import Repository

log = logging.getLogger("cachesrv.gc")

FLUSH_INTERVAL = 5.0  # seconds between access-time flushes
STEP_PAUSE = 0.002  # seconds between two GC increments: the event loop's turn


async def run(
    repo: Repository, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Until cancelled. The first collection waits for one interval (never at start-up)."""
    interval = repo.config.gc_interval
    task_status.started()
    next_gc = trio.current_time() + interval if interval > 0 else float("inf")
    try:
        while True:
            await trio.sleep(min(FLUSH_INTERVAL, max(next_gc - trio.current_time(), 0)))
            await trio.to_thread.run_sync(repo.access.flush, repo.catalog)
            if trio.current_time() >= next_gc:
                try:
                    repo.last_gc = await collect(repo)
                except Exception:
                    log.exception("garbage collection failed; the next one retries")
                next_gc = trio.current_time() + interval
                # handles on storage compaction removed (here or in another process)
                repo.store.release_unused()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(repo.access.flush, repo.catalog)


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
        log.info(
            "gc: %d chunks (%d bytes) swept, %d packs compacted, %d bytes reclaimed in %.2fs",
            report.swept_chunks,
            report.swept_bytes,
            report.compacted_packs,
            report.reclaimed_bytes,
            report.seconds,
        )
    return report
