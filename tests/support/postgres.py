"""A throwaway PostgreSQL server for tests that talk to a real database.

:func:`running_postgres` initialises a cluster in a temporary folder, starts it
on 127.0.0.1 with a free port, creates one database and yields its URL. The
server is stopped (``pg_ctl stop -m immediate``) when the block exits.

PostgreSQL refuses to run as root, so under root (as in CI) ``initdb`` and
``pg_ctl`` run as the ``postgres`` system user through ``runuser``, and the
folders they write are handed to that user.

Layout inside the run folder::

    <run>/data/            the cluster (PGDATA)
    <run>/socket/          the unix socket directory
    <run>/postgres.log     the server log, quoted when start-up fails
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

DATABASE = "fedmine_test"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
SEARCH_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux).
MAX_SOCKET_PATH = 100
SERVER_SETTINGS = (
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=20",
    "shared_buffers=16MB",
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


class PostgresFailed(RuntimeError):
    """The throwaway server could not be initialised or started."""


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = []
    for pattern in SEARCH_DIRS:
        candidates.extend(Path(p) for p in glob.glob(pattern))
    candidates = [d for d in candidates if (d / "initdb").exists() and (d / "pg_ctl").exists()]
    # Highest major version first: /usr/lib/postgresql/16/bin before .../15/bin.
    candidates.sort(key=lambda d: _version_key(d.parent.name), reverse=True)
    return candidates[0] if candidates else None


def _version_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (-1, name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_postgres(tmp_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Run a PostgreSQL server for the duration of the block.

    Parameters
    ----------
    tmp_dir : path
        A folder this server may fill; its cluster, socket and log go inside.
        When the ``postgres`` user (under root) cannot reach it, or its path is
        too long for a unix socket, a private folder under the system temp
        directory is used instead and removed at exit.

    Yields
    ------
    url : str
        ``postgresql://postgres@127.0.0.1:PORT/fedmine_test`` (trust auth).

    Raises
    ------
    PostgresUnavailable
        No ``initdb``/``pg_ctl`` found; run ``.ci/ensure-postgres``.
    PostgresFailed
        ``initdb`` or the server start failed; the message quotes the log.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
            f"{', '.join(SEARCH_DIRS)}; run .ci/ensure-postgres to install them"
        )
    as_root = os.geteuid() == 0
    owner = pwd.getpwnam(SYSTEM_USER) if as_root else None
    run_dir, private = _run_dir(Path(tmp_dir), owner)
    try:
        data, sockets, log = run_dir / "data", run_dir / "socket", run_dir / "postgres.log"
        for folder in (data, sockets):
            folder.mkdir(mode=0o700)
            if owner is not None:
                os.chown(folder, owner.pw_uid, owner.pw_gid)
        log.touch()
        if owner is not None:
            os.chown(log, owner.pw_uid, owner.pw_gid)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            command = [str(bin_dir / args[0]), *args[1:]]
            if owner is not None:
                command = ["runuser", "-u", SYSTEM_USER, "--", *command]
            return subprocess.run(command, cwd=run_dir, capture_output=True, text=True, check=False)

        done = run(
            "initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        if done.returncode != 0:
            raise PostgresFailed(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")

        port = _start(run, data, sockets, log)
        try:
            _create_database(port)
            yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
        finally:
            run("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w")
    finally:
        if private:
            shutil.rmtree(run_dir, ignore_errors=True)


def _run_dir(tmp_dir: Path, owner: pwd.struct_passwd | None) -> tuple[Path, bool]:
    """A fresh folder for one server, and whether it lies outside ``tmp_dir``."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    candidate = Path(tempfile.mkdtemp(prefix="postgres-", dir=tmp_dir))
    socket_path = candidate / "socket" / ".s.PGSQL.65535"
    if len(str(socket_path)) <= MAX_SOCKET_PATH and _reachable(candidate, owner):
        return candidate, False
    candidate.rmdir()
    private = Path(tempfile.mkdtemp(prefix="fedmine-postgres-"))
    if owner is not None:
        os.chown(private, owner.pw_uid, owner.pw_gid)
    return private, True


def _reachable(folder: Path, owner: pwd.struct_passwd | None) -> bool:
    """Whether the server's user can enter ``folder`` (and so every parent)."""
    if owner is None:
        return True
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    probe = subprocess.run(
        ["runuser", "-u", SYSTEM_USER, "--", "test", "-x", str(folder)],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _start(run, data: Path, sockets: Path, log: Path, *, attempts: int = 3) -> int:
    """Start the server on a free port; retry if another process took the port."""
    settings = " ".join(f"-c {setting}" for setting in SERVER_SETTINGS)
    for _ in range(attempts):
        port = free_port()
        done = run(
            "pg_ctl", "start", "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", f"-p {port} -k {sockets} {settings}",
        )  # fmt: skip
        if done.returncode == 0:
            return port
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        if not any("could not bind" in line or "in use" in line for line in tail):
            break
    raise PostgresFailed(
        f"pg_ctl start failed (exit {done.returncode}): {done.stderr.strip()}; log {log}: {' | '.join(tail)}"
    )


def _create_database(port: int) -> None:
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
