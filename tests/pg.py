"""A throwaway PostgreSQL server for the ledger's PostgreSQL backend tests.

Uses Debian's postgresql package (tests/install-system-deps.sh installs it): initdb a cluster in a temporary
folder, run it on 127.0.0.1 on a free port with its socket in that folder, as the unprivileged `postgres`
user when the suite runs as root (postgres refuses to run as root). Stopped by its own pg_ctl.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def pg_bin() -> pathlib.Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(found)
    return pathlib.Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a postgresql:// URL of a fresh, empty database."""
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    tmp = tempfile.mkdtemp(prefix="teeproxy-pg-")
    data = pathlib.Path(tmp) / "data"
    if as_root:
        shutil.chown(tmp, "postgres")
        os.chmod(tmp, 0o700)
    user = "postgres" if as_root else os.environ.get("USER", "postgres")
    port = _free_port()
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "--no-sync"], **run)
    options = f"-h 127.0.0.1 -p {port} -k {tmp} -F"
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", f"{tmp}/log", "-w", "start"], **run
    )
    try:
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], **run)
        shutil.rmtree(tmp, ignore_errors=True)
