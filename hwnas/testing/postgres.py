"""A private PostgreSQL cluster (Debian's postgresql binaries) in a temporary folder, on a free
loopback port: the shared database of hwnas's distributed tests and benchmarks.

PostgreSQL refuses to run as root; where the tests run as root the cluster is made and run
as the unprivileged `postgres` user (or $HWNAS_PG_USER). Nothing here touches a database
that was already running: initdb, a fresh port, a socket folder of its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from hwnas.testing.sshd import free_port


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(
        f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install Debian's postgresql package")
    return found


class PostgresCluster:
    def __init__(self, user: str | None = None) -> None:
        self.as_root = os.geteuid() == 0
        self.user = user or os.environ.get("HWNAS_PG_USER") or (
            "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name)
        self.folder = Path(tempfile.mkdtemp(prefix="hwnas-pg-"))
        self.folder.chmod(0o755)
        self.data = self.folder / "data"
        self.sockets = self.folder / "sockets"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self.database = "hwnas"
        if self.as_root:
            for path in (self.data, self.sockets):
                path.mkdir()
            self.log.touch()
            entry = pwd.getpwnam(self.user)
            for path in (self.data, self.sockets, self.log):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        command = list(argv)
        if self.as_root:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=timeout,
                              cwd=self.folder)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> "PostgresCluster":
        if not (self.data / "PG_VERSION").exists():
            self._run(pg_bin("initdb"), "-D", str(self.data), "--auth=trust", "--no-sync",
                      "-U", self.user, "--encoding=UTF8")
        self._pg_ctl("start", "-w", "-t", "60", "-o",
                     f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                     f"-c fsync=off -c max_connections=200")
        self.createdb(self.database)
        return self

    def createdb(self, name: str) -> str:
        """A new database in this cluster; its URL."""
        created = self._run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", self.user, name, check=False)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(f"createdb failed: {created.stderr}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def password_role(self, name: str, password: str) -> str:
        """A role that logs in with its password only (scram-sha-256 over TCP), owning a new
        database of its name; the URL with the password (the tests of what hwnas keeps of it)."""
        psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d",
                self.database, "-v", "ON_ERROR_STOP=1", "-c"]
        self._run(*psql, f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self._run(pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                  "-O", name, name)
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self._pg_ctl("reload")
        return f"postgresql+psycopg2://{name}:{password}@127.0.0.1:{self.port}/{name}"

    def _pg_ctl(self, *args: str) -> None:
        done = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args,
                         check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed: {done.stdout}{done.stderr}"
                               f"{self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash of the database server (clients lose their connections)."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", mode, "-w")

    def restart_after(self, seconds: float) -> None:
        """The database goes away for ``seconds``, as in a crash or a network cut, then is back."""
        self.stop("immediate")
        time.sleep(seconds)
        self._pg_ctl("start", "-w", "-t", "60", "-o",
                     f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                     f"-c fsync=off -c max_connections=200")

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
