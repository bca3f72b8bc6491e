"""``cachesrv``: serve, and the tools that work on a store (stats, gc, fsck, analyze)."""

from __future__ import annotations

import argparse
import json
import sys

from cachesrv import __version__, config
from cachesrv.http.accesslog import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachesrv",
        description="A deduplicating cache server for CI pipelines "
        "(drop-in for go-simple-uploader).",
    )
    parser.add_argument("--version", action="version", version=f"cachesrv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP server")
    config.add_arguments(serve, server=True)

    stats = commands.add_parser("stats", help="print the store's numbers as JSON")
    config.add_arguments(stats, server=False, also=config.LIFECYCLE_SETTINGS)
    stats.add_argument(
        "--objects",
        action="store_true",
        help="also each cache's unique and shared bytes, last access, the next eviction",
    )

    gc = commands.add_parser(
        "gc", help="expire, evict past --max-size, sweep unreferenced chunks, compact packs"
    )
    config.add_arguments(gc, server=False, also=config.LIFECYCLE_SETTINGS)

    fsck = commands.add_parser(
        "fsck", help="verify every chunk and reference; exit 1 and name what is broken"
    )
    config.add_arguments(fsck, server=False)
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="quarantine corrupt chunks, trim torn pack tails, remove leftover files",
    )

    imports = commands.add_parser(
        "import",
        help="bring an old go-simple-uploader directory into the store (idempotent)",
        description="Store every file below DIR as the object at its relative path, with "
        "the file's mtime as Last-Modified and now as its last access. Files already stored "
        "with the same size and mtime are skipped, so it can run again.",
    )
    imports.add_argument("directory", metavar="DIR", help="the old server's directory")
    config.add_arguments(
        imports,
        server=False,
        also=("compression_level", "max_size", "hard_limit", "upload_pin_ttl"),
        chunking=True,
    )

    analyze = commands.add_parser(
        "analyze",
        help="replay tarballs through the chunker to size a volume (writes nothing)",
        description="Replay tarballs, oldest first (day 1, day 2, ...), as successive uploads "
        "at each chunk size and zstd level asked, and report stored bytes, dedup, chunk count "
        "and speed per setting, the bytes needed to keep the last N versions, and a "
        "recommended setting and volume.",
    )
    analyze.add_argument("files", nargs="+", metavar="TAR", help="files to replay ('-': stdin)")
    analyze.add_argument(
        "--chunk-avg",
        action="append",
        type=config.parse_size,
        metavar="SIZE",
        help="FastCDC average chunk size (64K, 65536); repeat to compare; min and max are "
        "a quarter and four times it, as the server's defaults; default 16K, 64K and 256K",
    )
    analyze.add_argument(
        "--level",
        action="append",
        type=int,
        help="zstd level; repeat to compare; default --compression-level (1)",
    )
    analyze.add_argument(
        "--retention",
        type=int,
        metavar="N",
        help="size the store for keeping the last N versions (default: all)",
    )
    analyze.add_argument("--plot", metavar="FILE.png", help="write a PNG of bytes kept per version")
    analyze.add_argument("--json", action="store_true", help="the numbers as JSON on stdout")
    analyze.add_argument("--plain", action="store_true", help="plain CDC, not tar-aware")
    analyze.add_argument(
        "--no-zstd-compare", action="store_true", help="skip compressing each file whole"
    )
    config.add_arguments(analyze, server=False, also=("compression_level", "max_size"))

    push = commands.add_parser(
        "push",
        help="store a directory as a tar, sending only the chunks the server lacks",
        description="Store what `tar -C DIR -cf - PATH...` would (default PATH: .) under "
        "--path or --key, chunked here as the server chunks uploads; only chunks the server "
        "lacks are sent. The result is an ordinary object: `curl URL/PATH | tar -x` restores "
        "it. A summary line goes to stderr.",
    )
    _client_arguments(push)
    push.add_argument("paths", nargs="*", metavar="PATH", help="below DIR (default: .)")
    push.add_argument("--replace", action="store_true", help="replace an existing --key entry")
    push.add_argument(
        "--max-age", type=float, metavar="S", help="replace a --key entry older than S seconds"
    )

    pull = commands.add_parser(
        "pull",
        help="restore an object into a directory, fetching only the chunks it lacks",
        description="Restore --path or --key (with --restore-key fallbacks) into DIR, fetching "
        "only chunks its files do not already hold and rewriting only files that changed. "
        "Prints the match (exact, partial) and the name found on stdout; exit 0 on a hit, "
        "2 on a miss (nothing written), 1 on an error.",
    )
    _client_arguments(pull)
    pull.add_argument(
        "--restore-key", action="append", default=[], metavar="PREFIX", help="fallback prefix"
    )
    pull.add_argument("--delete", action="store_true", help="remove what DIR has and it lacks")
    pull.add_argument(
        "--delete-below",
        action="append",
        default=[],
        metavar="SUBDIR",
        help="remove what it lacks below SUBDIR of DIR only (repeatable)",
    )
    pull.add_argument(
        "--state",
        metavar="DIR",
        help="where the index of restored files is kept (default $XDG_CACHE_HOME/cachesrv/pull)",
    )
    return parser


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    import os

    parser.add_argument(
        "--server",
        default=os.environ.get("CACHESRV_SERVER"),
        required="CACHESRV_SERVER" not in os.environ,
        help="the server's URL (env CACHESRV_SERVER)",
    )
    name = parser.add_mutually_exclusive_group(required=True)
    name.add_argument("--path", help="an object path, as in curl URL/PATH")
    name.add_argument("--key", help="a keyed cache entry, as in /-/cache/KEY")
    parser.add_argument("-C", dest="directory", required=True, metavar="DIR", help="the tree")
    parser.add_argument(
        "--token",
        default=os.environ.get("CACHESRV_TOKEN"),
        help="a token (env CACHESRV_TOKEN), sent as Authorization: Bearer",
    )
    parser.add_argument(
        "--user", default=os.environ.get("CACHESRV_USER"), help="USER:PASS for Basic auth"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("push", "pull"):
        return _client(args)
    cfg = config.load(args)
    configure_logging(cfg.log_level, cfg.log_format, sys.stderr)
    if args.command == "serve":
        from cachesrv import malloc
        from cachesrv.server import serve

        malloc.bound_heap(malloc.SERVER_MMAP_THRESHOLD, trim_threshold=malloc.SERVER_TRIM_THRESHOLD)

        serve(cfg)
        return 0
    if args.command == "stats":
        from cachesrv.repository import Repository

        repo = Repository.open(cfg)
        try:
            from cachesrv.status import status

            json.dump(status(repo, objects=args.objects), sys.stdout, indent=2)
            print()
        finally:
            repo.close()
        return 0
    if args.command in ("gc", "fsck"):
        from cachesrv.repository import Repository

        repo = Repository.open(cfg)
        try:
            if args.command == "gc":
                json.dump(repo.collector().run().as_dict(), sys.stdout, indent=2)
                print()
                return 0
            from cachesrv.lifecycle.fsck import fsck

            report = fsck(repo.store, repo.catalog, repair=args.repair)
            json.dump(report.as_dict(), sys.stdout, indent=2)
            print()
            for problem in report.problems:
                print(f"cachesrv fsck: {problem}", file=sys.stderr)
            return 0 if report.clean else 1
        finally:
            repo.close()
    if args.command == "import":
        return _import(cfg, args.directory)
    if args.command == "analyze":
        return _analyze(cfg, args)
    return 2


def _import(cfg: config.Config, directory: str) -> int:
    from pathlib import Path

    from cachesrv.importer import StoreFull, import_tree, walk
    from cachesrv.progress import Progress
    from cachesrv.repository import Repository

    root = Path(directory)
    if not root.is_dir():
        print(f"cachesrv import: {directory} is not a directory", file=sys.stderr)
        return 2
    repo = Repository.open(cfg)
    try:
        total = sum(st.st_size for _, _, st in walk(root))
        try:
            report = import_tree(repo, root, Progress(total, "import"))
        except StoreFull as exc:
            print(f"cachesrv import: {exc}; run it again after raising the limit", file=sys.stderr)
            return 1
    finally:
        repo.close()
    mb = 1e6
    dedup = report.as_dict()["dedup_fraction"]
    print(
        f"imported {report.files} files, {report.bytes / mb:.1f} MB "
        f"({report.new_bytes / mb:.1f} MB new after dedup"
        + (f", {dedup:.1%} deduplicated" if dedup is not None else "")
        + f", {report.stored_bytes / mb:.1f} MB stored); "
        f"skipped {report.skipped} already stored ({report.skipped_bytes / mb:.1f} MB)"
        + (f"; {len(report.refused)} refused (see the warnings)" if report.refused else ""),
        file=sys.stderr,
    )
    json.dump(report.as_dict(), sys.stdout)
    print()
    return 1 if report.refused else 0


def _analyze(cfg: config.Config, args: argparse.Namespace) -> int:
    from cachesrv import analyze
    from cachesrv.progress import Progress

    if args.retention is not None and args.retention < 1:
        print("cachesrv analyze: --retention must be at least 1", file=sys.stderr)
        return 2
    avgs = args.chunk_avg or list(analyze.DEFAULT_CHUNK_AVGS)
    levels = args.level or [cfg.compression_level]
    settings = [analyze.Setting(a, lv) for a in dict.fromkeys(avgs) for lv in dict.fromkeys(levels)]
    progress = Progress(analyze._total_size(args.files), "analyze")
    result = analyze.run(
        args.files,
        settings,
        retention=args.retention,
        tar_aware=not args.plain,
        compare_zstd=not args.no_zstd_compare,
        progress=progress,
    )
    if args.plot:
        analyze.plot(result, args.plot)
    if args.json:
        json.dump(result.as_dict(cfg.max_size), sys.stdout, indent=2)
        print()
    else:
        print(analyze.render(result, cfg.max_size))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _client(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cachesrv.client.progress import Progress
    from cachesrv.client.remote import Remote, RemoteError, Target

    verb = args.command
    target = Target("path", args.path) if args.path is not None else Target("key", args.key)
    directory = Path(args.directory)
    try:
        remote = Remote(args.server, args.token, args.user)
        progress = Progress(verb)
        if verb == "push":
            from cachesrv.client.push import push

            if not push(
                remote, target, directory, args.paths, args.replace, args.max_age, progress
            ):
                print(f"cachesrv push: {target.name!r} exists and is kept", file=sys.stderr)
            return 0
        from cachesrv.client.pull import pull, summary

        result = pull(
            remote,
            target,
            directory,
            args.restore_key,
            Path(args.state) if args.state else None,
            ["."] if args.delete else args.delete_below,
            progress,
        )
        if result is None:
            print("miss")
            return 2
        print(f"{result.match} {result.name}")
        summary(result, progress)
        return 0
    except RemoteError as exc:
        print(f"cachesrv {verb}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failed run is exit 1 with one line, whatever failed
        print(f"cachesrv {verb}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
