"""The embedded PostgreSQL (real server, no mocks) wherever the project sits, including folders other users cannot
enter (a clone under /root, or in a fresh `mktemp -d` folder: both 0700), which matters when run as root."""
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from shotline_controller import embedded_postgres
from shotline_controller.embedded_postgres import (
    EmbeddedPostgres,
    package_dir,
    public_temp_dir,
)

pytestmark = pytest.mark.integration

as_root = os.geteuid() == 0
root_only = pytest.mark.skipif(not as_root, reason="the server runs as another user only when started by root")


def searchable_by_others(path: Path) -> bool:
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in [*Path(path).parents, Path(path)])


@pytest.fixture
def servers():
    """Makes EmbeddedPostgres servers; stops them afterwards and removes the data folders they kept under
    /var/lib/shotline-postgres (never the shared copy of the binaries) and the temp folders given to it."""
    made, folders = [], []

    def make(data_dir: Path, **kwargs) -> EmbeddedPostgres:
        server = EmbeddedPostgres(data_dir, **kwargs)
        made.append(server)
        return server
    make.folders = folders
    yield make
    for server in made:
        server.stop()
    for server in made:
        if server.data_dir.parent == embedded_postgres.ROOT_HOME and server.data_dir.name.startswith("data-"):
            shutil.rmtree(server.data_dir, ignore_errors=True)
        if server.socket_dir != server.data_dir:
            shutil.rmtree(server.socket_dir, ignore_errors=True)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def private_dir(servers) -> Path:
    """A fresh mkdtemp folder (0700), like a clone under /root."""
    path = Path(tempfile.mkdtemp(prefix="shotline-private-"))
    servers.folders.append(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    return path


def select_one(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1").fetchone()[0]


def postmaster_executable(server: EmbeddedPostgres) -> Path:
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    return Path(os.readlink(f"/proc/{pid}/exe"))


def test_data_folder_inside_a_private_folder_works_and_keeps_its_data(servers):
    requested = private_dir(servers) / "clone" / ".shotline" / "pgdata"
    server = servers(requested)
    assert server.start() is True
    assert select_one(server.url) == 1
    if as_root:  # the server's user cannot enter the 0700 folder: the data lives where it can, linked from there
        assert requested.is_symlink()
        assert requested.resolve() == server.data_dir
        assert server.data_dir.parent == embedded_postgres.ROOT_HOME
        assert searchable_by_others(server.data_dir.parent)
    else:
        assert not requested.is_symlink() and server.data_dir == requested
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    server.stop()
    assert not server.is_running()

    again = servers(requested)  # a later run: follows the link to the same data
    assert again.data_dir == server.data_dir
    assert again.start() is True
    assert again.start() is False  # already running
    with psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]
    again.stop()
    assert not again.is_running()


@root_only
def test_server_runs_from_binaries_every_parent_of_which_others_can_search(servers):
    server = servers(private_dir(servers) / "pgdata")
    assert searchable_by_others(server.bin_dir)
    assert not server.bin_dir.is_relative_to(package_dir())  # a copy, not the venv's own
    for name in ("postgres", "initdb", "pg_ctl"):
        assert (server.bin_dir / name).stat().st_mode & stat.S_IXOTH
    server.start()
    assert postmaster_executable(server) == server.bin_dir / "postgres"
    assert select_one(server.url) == 1


@root_only
def test_binaries_are_copied_out_of_a_package_in_a_private_folder(servers, monkeypatch):
    """The package itself in a 0700 folder (a venv under /root): two starts at once copy it into one reachable
    folder (here a temp stand-in for /var/lib/shotline-postgres), and the server runs from the copy."""
    source = package_dir()
    private = private_dir(servers)
    for name in (source.name, f"{source.name}.libs"):
        shutil.copytree(source.parent / name, private / name, symlinks=True)
    home = public_temp_dir("shotline-pg-home-")
    servers.folders.append(home)
    monkeypatch.setattr(embedded_postgres, "ROOT_HOME", home)

    with ThreadPoolExecutor(2) as pool:
        copies = list(pool.map(lambda _: embedded_postgres.server_binaries(private / source.name), range(2)))
    assert copies[0] == copies[1]
    assert copies[0].is_relative_to(home) and searchable_by_others(copies[0])
    assert [path.name for path in home.iterdir()] == [copies[0].parents[2].name]  # no temp copies left behind

    server = servers(private / "pgdata", package=private / source.name)
    assert server.bin_dir == copies[0]
    assert server.start() is True
    assert postmaster_executable(server) == copies[0] / "postgres"
    assert select_one(server.url) == 1
    assert (private / "pgdata").resolve() == server.data_dir and server.data_dir.is_relative_to(home)


def test_long_data_path_keeps_its_socket_path_short(servers):
    base = public_temp_dir("shotline-pg-long-")
    servers.folders.append(base)
    server = servers(base / ("x" * 90) / "pgdata")
    assert server.socket_dir != server.data_dir
    assert len(str(server.socket_dir / ".s.PGSQL.5432").encode()) <= 107
    assert server.start() is True
    assert select_one(server.url) == 1
