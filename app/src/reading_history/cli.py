"""The `reading-history` command: serve, manage tokens, purge, report the schema.

The web stack is imported only by `serve`, and the database driver only by
the commands that connect, so `schema-version` works where only the package
itself is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias, TypeVar

from reading_history import __version__
from reading_history.migrations import expected_version
from reading_history.retention import PURGE_BATCH_SIZE

if TYPE_CHECKING:
    from reading_history.access import TokenInfo
    from reading_history.core.config import Settings
    from reading_history.core.db import Connection

T = TypeVar("T")

EXIT_OK = 0
# The command ran and failed: a database error, or nothing to act on.
EXIT_FAILED = 1
# The command could not start: bad arguments or settings.
EXIT_USAGE = 2

# As the API's: ids beyond JSON's exact integers are refused there.
ID_MAX = 2**53 - 1
BIGINT_MAX = 2**63 - 1
TOKEN_NAME_MAX_LENGTH = 100
TOKEN_LIST_COLUMNS = (
    "id",
    "user_id",
    "name",
    "created_at",
    "last_used_at",
    "revoked_at",
)


def user_id_argument(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= ID_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a user id from 1 up")
    return value


def token_id_argument(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token id from 1 up")
    return value


def positive_argument(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 up")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def token_name_argument(text: str) -> str:
    if not 1 <= len(text) <= TOKEN_NAME_MAX_LENGTH or not text.isprintable():
        raise argparse.ArgumentTypeError(
            f"a token name has 1 to {TOKEN_NAME_MAX_LENGTH} printable characters"
        )
    return text


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
    _add_purge_parser(commands)
    _add_tokens_parser(commands)
    return parser


# Generic only to type checkers, hence the quotes.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_purge_parser(commands: Commands) -> None:
    purge = commands.add_parser(
        "purge-expired",
        help="delete every read older than its user's retention period",
    )
    purge.add_argument(
        "--batch-size",
        type=positive_argument,
        default=PURGE_BATCH_SIZE,
        help="rows deleted per transaction (default: %(default)s)",
    )


def _add_tokens_parser(commands: Commands) -> None:
    tokens = commands.add_parser("tokens", help="make, list and revoke API tokens")
    actions = tokens.add_subparsers(dest="tokens_command", required=True)

    create = actions.add_parser(
        "create", help="make a token for one user and print it, once"
    )
    create.add_argument("--user-id", type=user_id_argument, required=True)
    create.add_argument("--name", type=token_name_argument, required=True)

    revoke = actions.add_parser(
        "revoke", help="revoke a token, by --id or by --user-id and --name"
    )
    revoke.add_argument("--id", dest="token_id", type=token_id_argument)
    revoke.add_argument("--user-id", type=user_id_argument)
    revoke.add_argument("--name", type=token_name_argument)

    listing = actions.add_parser(
        "list", help="list tokens without the tokens themselves"
    )
    listing.add_argument("--user-id", type=user_id_argument)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "serve":
        return serve()
    if arguments.command == "purge-expired":
        return run_with_database(lambda conn: purge_expired(conn, arguments))
    if arguments.command == "tokens":
        return tokens(parser, arguments)
    print(expected_version())
    return EXIT_OK


# serve


def serve() -> int:
    settings = _settings_or_none()
    if settings is None:
        return EXIT_USAGE

    import uvicorn

    from reading_history.core.logs import configure_logging

    configure_logging(settings.log_level)
    uvicorn.run(
        # A factory, so that each worker process builds its own application.
        "reading_history.main:create_served_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # Logging is already set up as JSON; each request is logged by the app.
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return EXIT_OK


def _settings_or_none() -> Settings | None:
    from reading_history.core.config import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as error:
        print(f"reading-history: {error}", file=sys.stderr)
        return None


# Commands that connect to the database


def run_with_database(command: Callable[[Connection], Awaitable[int]]) -> int:
    """Run a command on one connection from the settings; 1 on a database error."""
    settings = _settings_or_none()
    if settings is None:
        return EXIT_USAGE

    import psycopg

    try:
        return asyncio.run(_connected(settings, command))
    except psycopg.Error as error:
        # libpq's messages name hosts and users, never the password.
        print(f"reading-history: database error: {error}", file=sys.stderr)
        return EXIT_FAILED


async def _connected(
    settings: Settings, command: Callable[[Connection], Awaitable[T]]
) -> T:
    from reading_history.core.db import connect

    async with await connect(settings) as conn:
        return await command(conn)


async def purge_expired(conn: Connection, arguments: argparse.Namespace) -> int:
    from reading_history import retention

    purged = await retention.purge_expired(conn=conn, batch_size=arguments.batch_size)
    print(f"purged {purged} expired reads")
    return EXIT_OK


def tokens(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    if arguments.tokens_command == "create":
        return run_with_database(lambda conn: create_token(conn, arguments))
    if arguments.tokens_command == "revoke":
        if arguments.token_id is None and (
            arguments.user_id is None or arguments.name is None
        ):
            parser.error("tokens revoke needs --id, or both --user-id and --name")
        return run_with_database(lambda conn: revoke_token(conn, arguments))
    return run_with_database(lambda conn: list_tokens(conn, arguments))


async def create_token(conn: Connection, arguments: argparse.Namespace) -> int:
    from reading_history import access

    try:
        created = await access.create_token(
            conn=conn, user_id=arguments.user_id, name=arguments.name
        )
    except access.TokenNameTakenError as error:
        print(f"reading-history: {error}; revoke it first", file=sys.stderr)
        return EXIT_FAILED

    # The token alone on stdout, so that a script can capture it; it is
    # shown this once and stored only as a digest.
    print(
        f"created token {created.token_id} {created.name!r} for user {created.user_id}",
        file=sys.stderr,
    )
    print(created.token)
    return EXIT_OK


async def revoke_token(conn: Connection, arguments: argparse.Namespace) -> int:
    from reading_history import access

    revoked = await access.revoke_token(
        conn=conn,
        token_id=arguments.token_id,
        user_id=arguments.user_id,
        name=arguments.name,
    )
    if revoked is None:
        print("reading-history: no such live token", file=sys.stderr)
        return EXIT_FAILED

    print(
        f"revoked token {revoked.token_id} {revoked.name!r} of user {revoked.user_id}"
    )
    return EXIT_OK


async def list_tokens(conn: Connection, arguments: argparse.Namespace) -> int:
    from reading_history import access

    found = await access.list_tokens(conn=conn, user_id=arguments.user_id)
    print("\t".join(TOKEN_LIST_COLUMNS))
    for info in found:
        print(token_line(info))
    return EXIT_OK


def token_line(info: TokenInfo) -> str:
    """Describe a token on one tab-separated line; never the token or its digest."""
    fields = [
        str(info.token_id),
        str(info.user_id),
        info.name,
        info.created_at.isoformat(),
        info.last_used_at.isoformat() if info.last_used_at else "-",
        info.revoked_at.isoformat() if info.revoked_at else "-",
    ]
    return "\t".join(fields)
