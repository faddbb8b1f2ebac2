"""A throwaway PostgreSQL server for tests: the session-scoped ``postgres_url`` fixture.

Usage (in a test module or conftest.py)::

    from .postgres import postgres_url  # noqa: F401

    def test_something(postgres_url):  # "postgresql+psycopg2://postgres@127.0.0.1:PORT/autoglm_test"
        ...

How it works:

* The server binaries (``initdb``, ``pg_ctl``) are looked for on ``$PATH``, then in the newest
  ``/usr/lib/postgresql/<version>/bin`` (where Debian's ``postgresql`` package puts them; ``.ci/run``
  installs that package on CI). ``$AUTOGLM_PG_BIN`` overrides the search: when it is set, only that
  folder is searched (e.g. ``AUTOGLM_PG_BIN=/nonexistent`` to check the skip path).
* When they are not found the fixture skips, except under CI (``$CI`` set to anything other than
  "", "0", "false", "no"), where it fails: CI must really run these tests.
* ``initdb -A trust -U postgres -E UTF8 --locale=C`` creates a cluster in a fresh folder under the
  system temp folder; ``pg_ctl start`` runs it listening only on 127.0.0.1, on a free port, with its
  unix socket in that same folder (fsync off: the data is thrown away). A database is then created
  and its SQLAlchemy URL (psycopg2 driver) is yielded; at the end ``pg_ctl stop -m fast`` and the
  folder is removed.
* PostgreSQL refuses to run as root: as root, initdb/pg_ctl run as the ``postgres`` system user (made
  by ``useradd --system`` if missing) through ``runuser`` (or ``su`` when there is no runuser), and
  the temp folder is chowned to it.
* Any failure to start raises, with the tail of the server log in the message.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "postgres"
DB_NAME = "autoglm_test"
START_TIMEOUT_S = 60


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _version_key(bin_dir: str) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,); unknown versions sort first."""
    name = Path(bin_dir).parent.name
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bin() -> Path | None:
    """The folder holding both initdb and pg_ctl, or None (see the module docstring for the search order)."""
    override = os.environ.get("AUTOGLM_PG_BIN")
    if override is not None:
        candidates = [override]
    else:
        candidates = []
        initdb = shutil.which("initdb")
        if initdb:
            # Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) so that
            # pg_ctl comes from the same installation.
            candidates += [str(Path(initdb).resolve().parent), str(Path(initdb).parent)]
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for folder in candidates:
        path = Path(folder)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", PG_USER],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return pwd.getpwnam(PG_USER)


def _as_pg_user(cmd: list[str]) -> list[str]:
    """Wrap cmd so that it runs as the postgres user when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return cmd
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    runuser = shutil.which("runuser", path=search)
    if runuser:
        return [runuser, "-u", PG_USER, "--", *cmd]
    su = shutil.which("su", path=search) or "su"
    return [su, "-s", "/bin/sh", PG_USER, "-c", shlex.join(cmd)]


def _base_dir() -> str:
    """A temp folder whose parents the postgres user can traverse when we are root (else the default)."""
    base = tempfile.gettempdir()
    if os.geteuid() == 0:
        for parent in [Path(base), *Path(base).parents]:
            if not os.stat(parent).st_mode & 0o001:
                return "/tmp"
    return base


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(no server log at {log}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


def _run(cmd: list[str], what: str, cwd: Path, log: Path | None = None, timeout: float = START_TIMEOUT_S) -> None:
    try:
        proc = subprocess.run(_as_pg_user(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = f"\n--- server log tail ---\n{_log_tail(log)}" if log else ""
        raise RuntimeError(f"PostgreSQL {what} timed out after {timeout}s: {shlex.join(exc.cmd)}{tail}") from exc
    if proc.returncode != 0:
        tail = f"\n--- server log tail ---\n{_log_tail(log)}" if log else ""
        raise RuntimeError(
            f"PostgreSQL {what} failed (exit {proc.returncode}): {shlex.join(proc.args)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}{tail}"
        )


def _wait_and_create_db(port: int, log: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres", connect_timeout=5)
            break
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on 127.0.0.1:{port} does not accept connections after {START_TIMEOUT_S}s: {exc}\n"
                    f"--- server log tail ---\n{_log_tail(log)}"
                ) from exc
            time.sleep(0.2)
    try:
        conn.autocommit = True  # CREATE DATABASE can't run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a database on a fresh PostgreSQL server private to this test session."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        where = (
            f"$AUTOGLM_PG_BIN={os.environ['AUTOGLM_PG_BIN']}"
            if "AUTOGLM_PG_BIN" in os.environ
            else "$PATH or /usr/lib/postgresql/*/bin"
        )
        reason = f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where}"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests (.ci/run installs Debian's postgresql package)")
        pytest.skip(f"{reason} (install PostgreSQL, e.g. apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        (pytest.fail if in_ci() else pytest.skip)("psycopg2 (psycopg2-binary) is not installed")

    root = Path(tempfile.mkdtemp(prefix="autoglm-pg-", dir=_base_dir()))
    data, log = root / "data", root / "server.log"
    try:
        if os.geteuid() == 0:
            user = _ensure_pg_user()
            os.chown(root, user.pw_uid, user.pw_gid)  # mkdtemp made it 0700: only that user needs it
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--locale=C"]
        _run(initdb, "initdb", cwd=root)
        pg_ctl = str(bin_dir / "pg_ctl")
        for attempt in range(3):  # the free port may be taken by someone else before the server binds it
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            log.unlink(missing_ok=True)  # the error message shows this attempt's log only
            try:
                _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(START_TIMEOUT_S),
                      "start"], "start", cwd=root, log=log, timeout=START_TIMEOUT_S + 10)  # fmt: skip
                break
            except RuntimeError:
                if (data / "postmaster.pid").exists():  # half-started (e.g. timed out): don't leave it running
                    subprocess.run(_as_pg_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), cwd=root,
                                   capture_output=True, timeout=START_TIMEOUT_S)  # fmt: skip
                if attempt == 2 or "could not bind" not in _log_tail(log):
                    raise
        try:
            _wait_and_create_db(port, log)
            yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/{DB_NAME}"
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], "stop", cwd=root, log=log)
    finally:
        shutil.rmtree(root)
