"""What grouping costs an upload to the S3 store: a corpus's v1 ingested into a fresh
prefix of SeaweedFS behind a link of ``--mbit`` (``bench.proxy``), with each
``--group-level`` in turn, in this process (no HTTP: the worker's own work, what bounds
an S3 upload). Prints MB/s, CPU seconds of this process (the proxy's threads included)
and the stored bytes, per level, ``--rounds`` times alternated::

    python -m bench.s3_upload --corpus go --mbit 1000     # levels 0 and 9

On an object store the upload compresses its new chunks as they come, and groups them
there (README, "grouped frames"); on the local store the background does it, and an
upload pays nothing for it, so there is nothing to measure there.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.parse

from bench import corpus as corpus_mod
from bench.procs import MB, fresh_dir
from bench.proxy import Proxy
from bench.seaweedfs import start_seaweedfs


def upload(tar: str, store_url: str, group_level: int) -> tuple[float, float, int]:
    """(seconds, CPU seconds, stored bytes) of one ingest of ``tar`` into ``store_url``."""
    from cachesrv.backends import open_chunk_store
    from cachesrv.config import Config
    from cachesrv.ingest.session import IngestSession

    config = Config()
    store = open_chunk_store(None, store_url, 30.0)
    session = IngestSession(
        store.writer(),
        config.chunking,
        config.compression_level,
        threads=2,
        group_level=group_level,
    )
    started, cpu = time.monotonic(), time.process_time()
    with open(tar, "rb") as f:
        while block := f.read(256 << 10):
            session.feed(block)
    session.finish()
    return time.monotonic() - started, time.process_time() - cpu, session.stats.stored_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", choices=corpus_mod.KINDS, default="go")
    ap.add_argument("--mbit", type=float, default=1000, help="the link to the bucket")
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 9])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tar = str(corpus_mod.build(args.corpus).v1)
    size = os.path.getsize(tar)
    with fresh_dir(None, prefix="cachesrv-bench-s3-upload-") as root:
        server = start_seaweedfs(root)
        try:
            port = urllib.parse.urlparse(server.endpoint).port
            assert port is not None
            with Proxy(port, rate=args.mbit * 1e6 / 8) as proxy:
                os.environ.update({**server.env, "AWS_ENDPOINT_URL": proxy.url})
                print(f"{args.corpus} v1: {size / MB:.1f} MB, link {args.mbit:g} Mbit/s")
                for _ in range(args.rounds):
                    for level in args.levels:
                        wall, cpu, stored = upload(tar, server.new_store_url(), level)
                        print(
                            f"--group-level {level}: {size / MB / wall:6.1f} MB/s, "
                            f"{cpu:5.1f} CPU s, stored {stored / MB:6.1f} MB"
                        )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
