"""A throwaway PostgreSQL server on loopback, for the distributed-search tests.

``.ci/run`` starts one with ``python tests/postgres_server.py start DIR`` (after installing Debian's
``postgresql`` package) and exports the URL it prints as ``AUTOTL_TEST_POSTGRES_URL``; the tests'
``postgres_url`` fixture starts its own the same way when that variable is not set.

The server listens on 127.0.0.1 only, on a free port, with password (scram-sha-256) authentication
for TCP connections, so the tests also see that a storage password never reaches the output.
PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

USER = "autotl"
PASSWORD = "pg-secret-7f3a"
DATABASE = "autotl"


class ServerUnavailable(RuntimeError):
    """No PostgreSQL server binaries here, or the server would not start."""


def find_bin_dir() -> Path:
    """The folder holding initdb/pg_ctl/postgres (Debian keeps them outside PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.insert(0, str(Path(on_path).resolve().parent))
    for folder in candidates:
        if all((Path(folder) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return Path(folder)
    raise ServerUnavailable("no PostgreSQL server binaries (initdb, pg_ctl, postgres): install Debian's postgresql "
                            "package (apt-get install -y postgresql)")


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServerUnavailable("running as root but runuser is missing: PostgreSQL must run as another user")
    return [runuser, "-u", "postgres", "--", *cmd]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServerUnavailable(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def start(folder: Path) -> str:
    """Create a cluster in ``folder``, start it, create the test role and database; return the URL."""
    bin_dir = find_bin_dir()
    folder = Path(folder).resolve()
    data, sockets = folder / "data", folder / "sockets"
    folder.mkdir(parents=True, exist_ok=True)
    for sub in (data, sockets):
        sub.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for sub in (data, sockets):
            shutil.chown(sub, "postgres")
        folder.chmod(0o755)
    _run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                          "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"]), "initdb")
    port = _free_port()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets} -c max_connections=200"
    _run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                          "-w", "-t", "60", "start"]), "pg_ctl start")
    psql = [str(bin_dir / "psql"), "-h", str(sockets), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
    _run(_as_server_user([*psql, "-c", f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"]), "create role")
    _run(_as_server_user([*psql, "-c", f"CREATE DATABASE {DATABASE} OWNER {USER}"]), "create database")
    (folder / "port").write_text(str(port))
    return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"


def stop(folder: Path) -> None:
    folder = Path(folder).resolve()
    if (folder / "data" / "postmaster.pid").exists():
        bin_dir = find_bin_dir()
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w",
                                        "stop"]), capture_output=True, text=True)


def wait_until_ready(url: str, timeout: float = 30) -> None:
    import sqlalchemy

    deadline = time.time() + timeout
    while True:
        try:
            with sqlalchemy.create_engine(url).connect():
                return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python tests/postgres_server.py start|stop DIR")
    try:
        if sys.argv[1] == "start":
            print(start(Path(sys.argv[2])))
        else:
            stop(Path(sys.argv[2]))
    except ServerUnavailable as exc:
        sys.exit(f"postgres_server: {exc}")
