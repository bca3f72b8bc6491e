"""``cachesrv``: serve, and the tools that work on a store (stats, ...)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cachesrv import __version__, config


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
    config.add_arguments(stats, server=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = config.load(args)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        from cachesrv.server import serve

        serve(cfg)
        return 0
    if args.command == "stats":
        from cachesrv.repository import Repository

        repo = Repository.open(cfg)
        try:
            json.dump(repo.stats(), sys.stdout, indent=2)
            print()
        finally:
            repo.close()
        return 0
    return 2
