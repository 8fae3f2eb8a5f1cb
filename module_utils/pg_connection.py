# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options and helpers shared by the PostgreSQL modules of this repository.

The modules run on the managed hosts, where psycopg 3.1 from the distribution is what
is installed, so nothing here uses an API that arrived later than 3.1.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import psycopg
except ImportError:
    psycopg = None
    PSYCOPG_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    PSYCOPG_IMPORT_ERROR = None

HAS_PSYCOPG = psycopg is not None

# What callers catch around queries; a stand-in keeps the name valid without psycopg.
DatabaseError: type[Exception] = psycopg.Error if HAS_PSYCOPG else Exception

SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PgConnectError(Exception):
    """A connection that failed, for callers that report the failure themselves."""


def pg_argument_spec() -> dict[str, dict[str, Any]]:
    """Return a fresh copy of the connection options every PostgreSQL module takes."""
    return dict(
        login_host=dict(type="str", default=""),
        login_port=dict(type="int", default=5432),
        login_user=dict(type="str", default="postgres"),
        login_password=dict(type="str", default="", no_log=True),
        login_db=dict(type="str", default="postgres"),
        login_unix_socket=dict(type="str", default=""),
        connect_timeout=dict(type="int", default=10),
        ssl_mode=dict(type="str", default="prefer", choices=SSL_MODES),
    )


def ensure_psycopg(module: AnsibleModule) -> None:
    """Fail the module with the import traceback when psycopg 3 is not installed."""
    if not HAS_PSYCOPG:
        module.fail_json(
            msg=missing_required_lib("psycopg (version 3)"),
            exception=PSYCOPG_IMPORT_ERROR,
        )


def server_host(params: dict[str, Any]) -> str:
    """Return the host libpq should use: the socket folder wins over a host name."""
    return params["login_unix_socket"] or params["login_host"]


def describe_server(params: dict[str, Any]) -> str:
    """Name the server in messages, the way an operator would look for it."""
    host = server_host(params)
    if not host:
        return f"the local socket (port {params['login_port']})"
    if host.startswith("/"):
        return f"socket {host} (port {params['login_port']})"
    return f"{host}:{params['login_port']}"


def connection_kwargs(params: dict[str, Any], dbname: str, application_name: str) -> dict[str, Any]:
    """Build psycopg.connect() keywords; empty values are left to libpq's defaults."""
    kwargs: dict[str, Any] = {
        "dbname": dbname,
        "port": params["login_port"],
        "user": params["login_user"],
        "connect_timeout": params["connect_timeout"],
        "sslmode": params["ssl_mode"],
        "application_name": application_name,
    }

    host = server_host(params)
    if host:
        kwargs["host"] = host

    # An empty password lets libpq fall back to ~/.pgpass or peer authentication.
    if params["login_password"]:
        kwargs["password"] = params["login_password"]

    return kwargs


def error_text(error: BaseException) -> str:
    """Flatten a driver error to one line, since libpq spreads its messages over several."""
    return re.sub(r"\s+", " ", str(error)).strip()


def connect(
    module: AnsibleModule,
    dbname: str | None = None,
    autocommit: bool = False,
    fail_on_error: bool = True,
    application_name: str = "ansible",
) -> Any:
    """Open a psycopg connection to dbname (default: the login_db option).

    When fail_on_error is false a failure raises PgConnectError carrying the message
    instead of ending the module, so read-only modules can report it as a result.
    """
    ensure_psycopg(module)
    params = module.params
    dbname = dbname or params["login_db"]
    kwargs = connection_kwargs(params, dbname, application_name)

    try:
        return psycopg.connect(autocommit=autocommit, **kwargs)
    except psycopg.Error as error:
        message = (
            f"cannot connect to database '{dbname}' on {describe_server(params)} "
            f"as '{params['login_user']}': {error_text(error)}"
        )
        if fail_on_error:
            module.fail_json(msg=message)
        raise PgConnectError(message) from error


def libpq_environment(params: dict[str, Any], dbname: str) -> dict[str, str]:
    """Return the PG* variables that point pg_dump and pg_restore at the server.

    The password travels only in PGPASSWORD so it never shows on a command line,
    where any local user could read it from the process list.
    """
    environment = {
        "PGPORT": str(params["login_port"]),
        "PGUSER": params["login_user"],
        "PGDATABASE": dbname,
        "PGCONNECT_TIMEOUT": str(params["connect_timeout"]),
        "PGSSLMODE": params["ssl_mode"],
    }

    host = server_host(params)
    if host:
        environment["PGHOST"] = host

    if params["login_password"]:
        environment["PGPASSWORD"] = params["login_password"]

    return environment
