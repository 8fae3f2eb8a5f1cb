"""The `reading-history` command: `serve` and `schema-version`.

The web stack is imported only by `serve`, so `schema-version` works where
only the package itself is installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reading_history import __version__
from reading_history.migrations import expected_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reading-history",
        description="The reading-history service of the feed backend.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="serve HTTP on the host and port from the settings",
    )
    commands.add_parser(
        "schema-version",
        help="print the database schema version this build expects",
    )
    return parser


def serve() -> int:
    from reading_history.core.config import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"reading-history: {error}", file=sys.stderr)
        return 2

    import uvicorn

    from reading_history.core.logs import configure_logging
    from reading_history.main import create_app

    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # Logging is already set up as JSON; each request is logged by the app.
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "serve":
        return serve()
    print(expected_version())
    return 0
