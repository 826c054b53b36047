"""Real PostgreSQL and a real S3-compatible store (versitygw) for the cluster tests and
benchmarks: started in temporary folders on free loopback ports, stopped afterwards.

PostgreSQL comes from Debian's package (`make setup` installs it when missing); initdb
refuses to run as root, so as root (CI) the server runs as `nobody` through setpriv.
versitygw is built by `make setup` (tools/versitygw.sh) into .cache/gobin.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
VERSITYGW = ROOT / ".cache" / "gobin" / "versitygw"
NOBODY = 65534


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path | None:
    """Where initdb and postgres are (Debian keeps them out of PATH), or None."""
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(found).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _as_unprivileged(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


def _give_away(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)


@dataclass
class Postgres:
    """One PostgreSQL server, trust auth for user `whisperd` on 127.0.0.1. Its files live
    in a folder of their own under /tmp (pytest's are closed to other users), removed by
    stop()."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="whisperd-pg-")))

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql://whisperd@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://whisperd@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> Postgres:
        bindir = pg_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL's initdb is not installed (Debian package postgresql)")
        _give_away(self.folder)
        data = self.folder / "data"
        subprocess.run(
            _as_unprivileged([str(bindir / "initdb"), "-D", str(data), "-U", "whisperd",
                              "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True,
        )
        self.port = free_port()
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            _as_unprivileged([
                str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                # A test database: durability is not what is being tested.
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=300",
            ]),
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log_path.read_text()[-3000:]}")
                time.sleep(0.1)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: clients are cut off
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class ObjectStore:
    """versitygw serving a POSIX folder as S3 on 127.0.0.1."""

    folder: Path
    access_key: str = "whisperd-test"
    secret_key: str = "whisperd-test-secret"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables a whisperd replica needs to reach it."""
        return {
            "S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 30.0) -> ObjectStore:
        if not VERSITYGW.exists():
            raise FileNotFoundError(f"{VERSITYGW} missing: run `make setup` (tools/versitygw.sh)")
        root = self.folder / "objects"
        root.mkdir(parents=True, exist_ok=True)
        (self.folder / "meta").mkdir(exist_ok=True)  # part ETags etc. (no xattrs needed)
        self.port = free_port()
        log = (self.folder / "versitygw.log").open("wb")
        self.proc = subprocess.Popen(
            [str(VERSITYGW), "--access", self.access_key, "--secret", self.secret_key,
             "--port", f"127.0.0.1:{self.port}", "posix", "--sidecar", str(self.folder / "meta"), str(root)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"versitygw did not start:\n{(self.folder / 'versitygw.log').read_text()[-3000:]}"
                    )
                time.sleep(0.1)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
