"""`whisperd model download NAME`: fetch a pre-converted GGML model for a real deployment.

Downloads are resumable (bytes land in `<file>.part`, and a re-run continues it with an
HTTP Range request), verified by SHA-1 before the file takes its final name, and made
with the standard library alone so that fetching a model adds no dependency.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ContextManager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from whisperd import __version__
from whisperd.models.errors import ModelFetchError

# whisper.cpp's models/download-ggml-model.sh fetches from here.
DEFAULT_BASE_URL = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main"
BASE_URL_ENV = "WHISPERD_MODEL_BASE_URL"

# Seconds to wait for a connection, and then for each read; a stalled transfer fails
# rather than hanging, and a re-run resumes it.
DEFAULT_TIMEOUT_SECS = 30.0

_CHUNK_BYTES = 1 << 20
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")


@dataclass(frozen=True, slots=True)
class KnownModel:
    """One official GGML model: its name, SHA-1 and rough size on disk."""

    name: str
    sha1: str
    size: str

    @property
    def filename(self) -> str:
        return f"ggml-{self.name}.bin"


# From whisper.cpp's models/README.md ("Available models"). The q5_0 variants without a
# published checksum there (medium-q5_0, medium.en-q5_0) are left out: an unverifiable
# download is not one we want to serve from.
KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel("tiny", "bd577a113a864445d4c299885e0cb97d4ba92b5f", "75 MiB"),
        KnownModel("tiny.en", "c78c86eb1a8faa21b369bcd33207cc90d64ae9df", "75 MiB"),
        KnownModel("base", "465707469ff3a37a2b9b8d8f89f2f99de7299dac", "142 MiB"),
        KnownModel("base.en", "137c40403d78fd54d454da0f9bd998f78703390c", "142 MiB"),
        KnownModel("small", "55356645c2b361a969dfd0ef2c5a50d530afd8d5", "466 MiB"),
        KnownModel("small.en", "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022", "466 MiB"),
        KnownModel("medium", "fd9727b6e1217c2f614f9b698455c4ffd82463b4", "1.5 GiB"),
        KnownModel("medium.en", "8c30f0e44ce9560643ebd10bbe50cd20eafd3723", "1.5 GiB"),
        KnownModel("large-v1", "b1caaf735c4cc1429223d5a74f0f4d0b9b59a299", "2.9 GiB"),
        KnownModel("large-v2", "0f4c8e34f21cf1a914c59d8b3ce882345ad349d6", "2.9 GiB"),
        KnownModel("large-v2-q5_0", "00e39f2196344e901b3a2bd5814807a769bd1630", "1.1 GiB"),
        KnownModel("large-v3", "ad82bf6a9043ceed055076d0fd39f5f186ff8062", "2.9 GiB"),
        KnownModel("large-v3-q5_0", "e6e2ed78495d403bef4b7cff42ef4aaadcfea8de", "1.1 GiB"),
        KnownModel("large-v3-turbo", "4af2b29d7ec73d781377bfd1758ca957a807e941", "1.5 GiB"),
        KnownModel("large-v3-turbo-q5_0", "e050f7970618a659205450ad97eb95a18d69c9ee", "547 MiB"),
    )
}


class DownloadError(ModelFetchError):
    """A model download failed; what was received is kept, and a re-run resumes it."""


class ChecksumMismatchError(DownloadError):
    """The downloaded file is not the expected one; it has been deleted."""


def known_model(name: str) -> KnownModel:
    """The table entry for `name`, or ValueError listing the names there are."""
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}: known models are {', '.join(KNOWN_MODELS)}"
        ) from None


def model_url(name: str, base_url: str | None = None) -> str:
    """Where `name` is fetched from: base_url, else $WHISPERD_MODEL_BASE_URL, else Hugging Face."""
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{known_model(name).filename}"


def file_sha1(path: Path) -> str:
    """Hex SHA-1 of a file, read in chunks."""
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while block := f.read(_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def download_model(
    name: str,
    dest_dir: Path,
    base_url: str | None = None,
    show_progress: bool = True,
    expected_sha1: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECS,
) -> Path:
    """Download model `name` into `dest_dir` as ggml-NAME.bin and return its path.

    A file already there with the right SHA-1 is returned without touching the network.
    `expected_sha1` overrides the table's checksum (a mirror serving other builds, tests).
    Raises ValueError for an unknown name, DownloadError when the transfer fails (re-run
    to resume) and ChecksumMismatchError when the finished file is not the expected one.
    """
    model = known_model(name)
    sha1 = (expected_sha1 or model.sha1).strip().lower()
    if not _SHA1_RE.match(sha1):
        raise ValueError(f"expected_sha1 must be 40 hexadecimal digits, got {expected_sha1!r}")
    url = model_url(name, base_url)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / model.filename
    part = dest_dir / f"{model.filename}.part"

    # A file that is already there but does not verify (an older build, a local conversion)
    # is left alone until a verified replacement is ready, then replaced atomically.
    if final.exists() and file_sha1(final) == sha1:
        return final

    console = Console(stderr=True)
    with part.open("ab") as out:
        _lock(out, part)
        try:
            digest = _fetch_into(url, out, part, timeout, console if show_progress else None)
        except DownloadError:
            out.flush()
            if os.fstat(out.fileno()).st_size == 0:
                part.unlink(missing_ok=True)  # nothing worth resuming from
            raise
        out.flush()
        os.fsync(out.fileno())

    if digest != sha1:
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{model.filename} from {url} has SHA-1 {digest}, expected {sha1}; the file was "
            f"deleted. If the server hosts a different build on purpose, pass its checksum; "
            f"otherwise check {BASE_URL_ENV} points at a trustworthy mirror"
        )
    os.replace(part, final)
    _fsync_dir(dest_dir)
    if show_progress:
        # soft_wrap keeps the path on one line, so it can be copied from a narrow terminal.
        console.print(
            f"[green]✓[/] {model.name} saved to {escape(str(final))} (SHA-1 verified)",
            soft_wrap=True,
        )
    return final


# --- transfer ---------------------------------------------------------------------------


def _fetch_into(
    url: str, out: BinaryIO, part: Path, timeout: float, console: Console | None
) -> str:
    """Fill `out` (opened for append, maybe holding a previous attempt) from `url`.

    Returns the SHA-1 of the whole file. Resumes with a Range request when `out` already
    holds bytes, and starts over when the server answers with the whole file instead.
    """
    offset = os.fstat(out.fileno()).st_size
    digest = hashlib.sha1()
    if offset:
        # Hash what is already there so the finished file needs no second read.
        with part.open("rb") as previous:
            while block := previous.read(_CHUNK_BYTES):
                digest.update(block)

    request = urllib.request.Request(url, headers={"User-Agent": f"whisperd/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            total = _content_range(exc.headers.get("Content-Range", ""))[2]
            if total is None or total == offset:
                # Nothing left to send: the part is complete, and is verified by the caller.
                return digest.hexdigest()
            # The part is longer than the file (it changed on the server): start over.
            return _start_over(url, out, part, timeout, console)
        hint = {404: " (no such model there: check the base URL)"}.get(exc.code, "")
        if exc.code >= 500:
            hint = " (a server-side problem: run the same command again later, it resumes)"
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        resumes = f"; it resumes from byte {offset}" if offset else ""
        raise DownloadError(
            f"could not fetch {url} ({_reason(exc)}); check the network or {BASE_URL_ENV}, "
            f"then run the same command again{resumes}"
        ) from None

    with response:
        if offset and response.status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                response.close()
                return _start_over(url, out, part, timeout, console)
        else:
            # 200: a fresh download, or a server that ignores Range and sends it all.
            if offset:
                out.truncate(0)
                digest = hashlib.sha1()
                offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None

        received = offset
        with _progress(console, part.name.removesuffix(".part")) as bar:
            task = (
                bar.add_task("download", total=total, completed=offset) if bar is not None else None
            )
            try:
                # read1: whatever has arrived, so a timeout mid-chunk loses nothing received.
                while block := response.read1(_CHUNK_BYTES):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    if bar is not None and task is not None:
                        bar.update(task, completed=received)
            except (OSError, http.client.HTTPException) as exc:
                out.flush()
                raise DownloadError(_interrupted(url, part, received, total, exc)) from None

    if total is not None and received < total:
        # http.client's read(n) returns b"" instead of raising when the peer closes early.
        raise DownloadError(_interrupted(url, part, received, total, "connection closed early"))
    return digest.hexdigest()


def _start_over(
    url: str, out: BinaryIO, part: Path, timeout: float, console: Console | None
) -> str:
    """Empty the part and fetch the whole file (no Range header, so this cannot recurse)."""
    out.truncate(0)
    return _fetch_into(url, out, part, timeout, console)


def _content_range(header: str) -> tuple[int | None, int | None, int | None]:
    """(first byte, last byte, total) from a Content-Range header; None where absent."""
    match = _CONTENT_RANGE_RE.match(header.strip())
    if not match:
        return None, None, None
    first, last, total = (int(v) if v and v.isdigit() else None for v in match.groups())
    return first, last, total


def _interrupted(url: str, part: Path, received: int, total: int | None, reason: object) -> str:
    of_total = f" of {total}" if total else ""
    return (
        f"download from {url} interrupted after {received}{of_total} bytes ({_reason(reason)}); "
        f"the bytes so far are kept in {part}, run the same command again to resume"
    )


def _reason(error: object) -> str:
    """A network error in a few words ("timed out", "[Errno 111] Connection refused")."""
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def _progress(console: Console | None, label: str) -> ContextManager[Progress | None]:
    """A rich download bar (bytes, rate, ETA) on stderr, or nothing when quiet."""
    if console is None:
        return nullcontext(None)
    return Progress(
        TextColumn(f"[bold]{escape(label)}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _lock(out: BinaryIO, part: Path) -> None:
    """Refuse to run two downloads into the same .part file (two processes, one models dir)."""
    try:
        fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadError(
            f"another process is downloading into {part}; wait for it to finish"
        ) from None


def _fsync_dir(path: Path) -> None:
    """Make the rename durable (a crash right after must not lose the finished file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
