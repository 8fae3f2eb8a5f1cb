# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the connection options shared by the PostgreSQL modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or address of the PostgreSQL server.
      - When empty, and O(login_unix_socket) is empty too, libpq connects through its
        default local socket, which suits peer authentication as the C(postgres) account.
    type: str
    default: ''
  login_port:
    description:
      - TCP port of the server, also the number in the name of its local socket.
    type: int
    default: 5432
  login_user:
    description:
      - Role to log in as.
    type: str
    default: postgres
  login_password:
    description:
      - Password of O(login_user).
      - When empty, libpq looks in C(~/.pgpass) or relies on an authentication method
        that needs no password.
      - The password is handed to client programs only through the E(PGPASSWORD)
        environment variable, never on a command line.
    type: str
    default: ''
  login_db:
    description:
      - Database of the first connection.
      - Modules that act on one database name it in their own O(database) option;
        M(pg_state) uses O(login_db) to look up whether that database exists.
    type: str
    default: postgres
  login_unix_socket:
    description:
      - Folder holding the server's local socket, for example V(/var/run/postgresql).
      - When set it is used instead of O(login_host).
    type: str
    default: ''
  connect_timeout:
    description:
      - Seconds to wait for a connection to be made before giving up.
    type: int
    default: 10
  ssl_mode:
    description:
      - Whether and how strictly TLS is negotiated with the server, as libpq's
        C(sslmode) setting.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
notes:
  - The connection's application name is C(ansible-) followed by the module name, so
    the module's sessions can be told apart in C(pg_stat_activity).
requirements:
  - psycopg 3.1 or newer on the managed host (Debian package C(python3-psycopg)).
"""
