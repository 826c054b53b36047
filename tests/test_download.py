"""Model downloads against a real HTTP server on 127.0.0.1 that can misbehave on purpose."""

from __future__ import annotations

import filecmp
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from whisperd import paths
from whisperd.models.download import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    KNOWN_MODELS,
    ChecksumMismatchError,
    DownloadError,
    download_model,
    file_sha1,
    model_url,
)

NAME = "tiny.en"
FILENAME = "ggml-tiny.en.bin"


@dataclass
class Faults:
    """What the server does wrong, and what it saw."""

    drop_after: int | None = None  # close the connection after this many body bytes, once
    stall_after: int | None = None  # stop sending (but keep the connection) after this many, once
    ignore_range: bool = False  # answer every request with the whole file, as some servers do
    range_headers: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class ModelServer:
    """Serves one file at /models/<FILENAME>, with Range support and injectable faults."""

    def __init__(self, payload: Path) -> None:
        self.payload = payload
        self.faults = Faults()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/models"

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        faults = self.faults
        if request.path != f"/models/{FILENAME}":
            request.send_error(404)
            return
        size = self.payload.stat().st_size
        range_header = request.headers.get("Range")
        faults.range_headers.append(range_header)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not faults.ignore_range:
            start = int(match.group(1))
            if start >= size:
                request.send_response(416)
                request.send_header("Content-Range", f"bytes */{size}")
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            request.send_response(200)
        request.send_header("Content-Length", str(size - start))
        request.send_header("Accept-Ranges", "none" if faults.ignore_range else "bytes")
        request.end_headers()

        limit, stall = size - start, False
        if faults.drop_after is not None:
            limit, faults.drop_after = min(limit, faults.drop_after), None
        elif faults.stall_after is not None:
            limit, faults.stall_after, stall = min(limit, faults.stall_after), None, True
        with self.payload.open("rb") as f:
            f.seek(start)
            remaining = limit
            while remaining and (block := f.read(min(remaining, 1 << 16))):
                request.wfile.write(block)
                remaining -= len(block)
        request.wfile.flush()
        if stall:
            faults.release.wait(timeout=30)
        if limit < size - start:
            # Cut the transfer short: close without sending the rest.
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ModelServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.faults.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def fetch(server: ModelServer, dest: Path, sha1: str, **options: object) -> Path:
    """download_model from the test server, quietly unless asked otherwise."""
    options.setdefault("show_progress", False)
    return download_model(NAME, dest, base_url=server.base_url, expected_sha1=sha1, **options)


@pytest.fixture(scope="module")
def model_file(tiny_en_model: Path) -> Path:
    """The real converted tiny.en model: a genuine 75 MB file to move around."""
    return tiny_en_model


@pytest.fixture(scope="module")
def model_sha1(model_file: Path) -> str:
    return file_sha1(model_file)


@pytest.fixture
def server(model_file: Path) -> Iterator[ModelServer]:
    with ModelServer(model_file) as running:
        yield running


def test_full_download(
    server: ModelServer, model_file: Path, model_sha1: str, tmp_path: Path, capsys
) -> None:
    dest = tmp_path / "models"
    path = fetch(server, dest, model_sha1, show_progress=True)
    assert path == dest / FILENAME
    assert file_sha1(path) == model_sha1
    assert not (dest / f"{FILENAME}.part").exists()
    assert server.faults.range_headers == [None]
    assert "SHA-1 verified" in capsys.readouterr().err

    # Present and verified: returned without asking the server again.
    assert fetch(server, dest, model_sha1) == path
    assert server.faults.range_headers == [None]


def test_interrupted_download_resumes(
    server: ModelServer, model_file: Path, model_sha1: str, tmp_path: Path
) -> None:
    cut = 3 * 1024 * 1024 + 123
    server.faults.drop_after = cut
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        fetch(server, tmp_path, model_sha1)
    part = tmp_path / f"{FILENAME}.part"
    assert part.stat().st_size == cut
    assert not (tmp_path / FILENAME).exists()

    path = fetch(server, tmp_path, model_sha1)
    assert server.faults.range_headers == [None, f"bytes={cut}-"]
    assert filecmp.cmp(path, model_file, shallow=False)
    assert not part.exists()


def test_server_ignoring_range_restarts(
    server: ModelServer, model_file: Path, model_sha1: str, tmp_path: Path
) -> None:
    # A stale part from an earlier attempt, and a server that always sends everything.
    (tmp_path / f"{FILENAME}.part").write_bytes(model_file.read_bytes()[:1000])
    server.faults.ignore_range = True
    path = fetch(server, tmp_path, model_sha1)
    assert server.faults.range_headers == ["bytes=1000-"]
    assert filecmp.cmp(path, model_file, shallow=False)


def test_complete_part_is_verified_without_refetching(
    server: ModelServer, model_file: Path, model_sha1: str, tmp_path: Path
) -> None:
    # Interrupted between the last byte and the rename: the server answers 416.
    shutil.copyfile(model_file, tmp_path / f"{FILENAME}.part")
    path = fetch(server, tmp_path, model_sha1)
    assert server.faults.range_headers == [f"bytes={model_file.stat().st_size}-"]
    assert filecmp.cmp(path, model_file, shallow=False)


def test_part_longer_than_the_file_starts_over(
    server: ModelServer, model_file: Path, model_sha1: str, tmp_path: Path
) -> None:
    # The file changed on the server since the part was started.
    size = model_file.stat().st_size
    (tmp_path / f"{FILENAME}.part").write_bytes(b"x" * (size + 10))
    path = fetch(server, tmp_path, model_sha1)
    assert server.faults.range_headers == [f"bytes={size + 10}-", None]
    assert filecmp.cmp(path, model_file, shallow=False)


def test_checksum_mismatch_leaves_no_file(server: ModelServer, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatchError, match=r"expected 0{40}.*deleted"):
        fetch(server, tmp_path, "0" * 40)
    assert list(tmp_path.iterdir()) == []


def test_wrong_existing_file_is_replaced_only_by_a_verified_one(
    server: ModelServer, model_file: Path, model_sha1: str, tmp_path: Path
) -> None:
    (tmp_path / FILENAME).write_bytes(b"an older build")
    path = fetch(server, tmp_path, model_sha1)
    assert filecmp.cmp(path, model_file, shallow=False)


def test_stalled_transfer_times_out(server: ModelServer, model_sha1: str, tmp_path: Path) -> None:
    server.faults.stall_after = 100_000
    with pytest.raises(DownloadError, match="timed out.*resume"):
        fetch(server, tmp_path, model_sha1, timeout=0.5)
    assert (tmp_path / f"{FILENAME}.part").stat().st_size == 100_000


def test_missing_file_on_server(server: ModelServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404.*check the base URL"):
        download_model(NAME, tmp_path, base_url=server.base_url + "/elsewhere", show_progress=False)


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(
        DownloadError, match="could not fetch .*refused.*run the same command again"
    ):
        download_model(
            NAME, tmp_path, base_url=f"http://127.0.0.1:{port}", show_progress=False, timeout=2
        )
    assert list(tmp_path.iterdir()) == []  # no empty .part left behind


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model 'huge'.*tiny\.en.*large-v3-turbo-q5_0"):
        download_model("huge", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_known_models_and_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {
        "tiny",
        "tiny.en",
        "base",
        "small.en",
        "medium.en",
        "large-v3",
        "large-v3-turbo-q5_0",
    } <= set(KNOWN_MODELS)
    assert all(re.fullmatch(r"[0-9a-f]{40}", m.sha1) for m in KNOWN_MODELS.values())
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    assert model_url("base.en") == f"{DEFAULT_BASE_URL}/ggml-base.en.bin"
    monkeypatch.setenv(BASE_URL_ENV, "http://mirror.local/whisper/")
    assert model_url("base.en") == "http://mirror.local/whisper/ggml-base.en.bin"
    assert model_url("base.en", "http://other") == "http://other/ggml-base.en.bin"


def test_known_checksums_match_whisper_cpp() -> None:
    readme = (paths.whisper_cpp_dir() / "models" / "README.md").read_text()
    published = dict(re.findall(r"^\| (\S+)\s+\|[^|]+\| `([0-9a-f]{40})` \|", readme, re.MULTILINE))
    assert {name: m.sha1 for name, m in KNOWN_MODELS.items()} == {
        name: sha1 for name, sha1 in published.items() if name in KNOWN_MODELS
    }
    # Everything published is known, except the tinydiarize build hosted elsewhere.
    assert set(published) - set(KNOWN_MODELS) == {"small.en-tdrz"}
