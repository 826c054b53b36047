"""whisperctl: whisperd from the command line, a thin layer over whisperd.client.

Results go to stdout (transcripts, tables, JSON); progress bars and messages go to
stderr, so `whisperctl transcribe talk.mp3 -f srt > talk.srt` works as it reads.
`--json` makes every command print machine-readable output (protobuf's JSON mapping for
jobs, model status and events; one object per line for streams).

Exit codes:
    0        success
    1        a local problem (a file that cannot be written)
    2        bad usage (unknown flag, missing or unreadable FILE, bad --format)
    3        the job (or model load) the command waited for failed
    4        the job the command waited for was cancelled
    64 + N   the call failed with gRPC status N, as grpcurl does: 67 INVALID_ARGUMENT,
             69 NOT_FOUND, 72 RESOURCE_EXHAUSTED, 73 FAILED_PRECONDITION,
             77 INTERNAL, 78 UNAVAILABLE (also: server unreachable, or health not
             SERVING), 80 UNAUTHENTICATED, ...
    130      interrupted (Ctrl-C); a job that was running keeps running
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import grpc
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.prompt import Confirm
from rich.table import Table

from whisperd import formats
from whisperd.client.connection import (
    ADDRESS_ENV,
    TOKEN_ENV,
    RetryEvent,
    RetryPolicy,
    WhisperdError,
    resolve_address,
)
from whisperd.client.sync_client import WhisperdClient
from whisperd.client.types import (
    Done,
    Job,
    JobOptions,
    JobStatus,
    NewSegment,
    ProgressUpdate,
    Requeued,
    Snapshot,
    to_json,
)
from whisperd.transcript import Segment

EXIT_LOCAL = 1
EXIT_FAILED = 3
EXIT_CANCELLED = 4
EXIT_INTERRUPTED = 130
EXIT_NOT_SERVING = 64 + grpc.StatusCode.UNAVAILABLE.value[0]

app = typer.Typer(
    help="whisperctl: transcribe audio with a whisperd server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# --- shared state and output ------------------------------------------------------------


@dataclass
class Ctx:
    address: str
    token: Optional[str]
    tls: bool
    ca: Optional[Path]
    json: bool

    def __post_init__(self) -> None:
        # soft_wrap: a message or an error is one line, whatever the terminal width.
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        # Into a pipe or a file, tables keep whole cells rather than fit an imagined screen.
        self.out = Console(highlight=False, width=None if sys.stdout.isatty() else 500)

    def client(self) -> WhisperdClient:
        retry = RetryPolicy(on_retry=self._on_retry)
        return WhisperdClient(self.address, tls=self.tls, ca_file=self.ca, token=self.token, retry=retry)

    def _on_retry(self, event: RetryEvent) -> None:
        if event.error.retry_after is None:
            return  # no answer at all: if it stays so, one line says so at the end
        self.say(f"{event.error.details}; retrying in {event.delay:.1f} s "
                 f"(attempt {event.attempt + 1} of {event.max_attempts})", style="yellow")

    def say(self, message: str, style: str = "") -> None:
        """A message for people (stderr)."""
        self.err.print(escape(message), style=style or None)

    def emit(self, text: str) -> None:
        """Output for programs (stdout), byte for byte."""
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        sys.stdout.flush()


def _ctx(ctx: typer.Context, json_output: bool = False) -> Ctx:
    obj = ctx.find_root().obj
    assert isinstance(obj, Ctx)
    obj.json = obj.json or json_output
    return obj


# --json is accepted before the command (whisperctl --json list) and after it (list --json).
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def _global(
    ctx: typer.Context,
    server: Annotated[Optional[str], typer.Option(
        "--server", "-s", envvar=ADDRESS_ENV, show_envvar=True,
        help="whisperd's address, host:port (default localhost:50051).")] = None,
    token: Annotated[Optional[str], typer.Option(
        "--token", envvar=TOKEN_ENV, show_envvar=True, help="Bearer token sent with every call.")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Use TLS (system root certificates).")] = False,
    ca: Annotated[Optional[Path], typer.Option(
        "--ca", exists=True, dir_okay=False, help="PEM file of the CA to trust; implies --tls.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    ctx.obj = Ctx(resolve_address(server), token, tls or ca is not None, ca, json_output)


def _clock(seconds: float) -> str:
    millis = max(round(seconds * 1000), 0)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def _segment_line(s: Segment) -> str:
    return f"[{_clock(s.start)} --> {_clock(s.end)}]  {s.text.strip()}"


def _when(moment: Optional[datetime]) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _write_file(c: Ctx, path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        c.say(f"error: cannot write {path}: {exc.strerror or exc}", style="bold red")
        raise typer.Exit(EXIT_LOCAL) from None


def _check_format(fmt: str) -> str:
    try:
        return formats.normalise_format(fmt)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None


def _status_exit(job: Job) -> int:
    return {JobStatus.FAILED: EXIT_FAILED, JobStatus.CANCELLED: EXIT_CANCELLED}.get(job.status, 0)


_STATUS_STYLE = {
    JobStatus.QUEUED: "cyan", JobStatus.RUNNING: "yellow", JobStatus.DONE: "green",
    JobStatus.FAILED: "bold red", JobStatus.CANCELLED: "magenta",
}


# --- options shared by transcribe and submit --------------------------------------------

FileArg = Annotated[Path, typer.Argument(
    exists=True, dir_okay=False, readable=True, help="Audio or video in any format FFmpeg reads.")]
LanguageOpt = Annotated[Optional[str], typer.Option(
    "--language", "-l", help="ISO 639-1 code of the spoken language; omit to detect it.")]
TaskOpt = Annotated[str, typer.Option("--task", help="transcribe, or translate (to English).")]
BeamOpt = Annotated[Optional[int], typer.Option("--beam-size", min=1, max=16, help="1 = greedy (server default 5).")]
WordsOpt = Annotated[bool, typer.Option("--word-timestamps", help="Per-word times (in --format json).")]
VadOpt = Annotated[bool, typer.Option("--vad", help="Skip non-speech with Silero VAD.")]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", help="Initial prompt: names, spelling, style.")]
WebhookOpt = Annotated[Optional[str], typer.Option("--webhook", help="URL that gets the finished job (POST).")]
ConditionOpt = Annotated[bool, typer.Option(
    "--condition-on-previous-text",
    help="Sequential mode: each 30 s window prompted with the previous one's text (default: "
         "windows cut at silences, decoded independently and in parallel).")]


def _options(language: Optional[str], task: str, beam_size: Optional[int], word_timestamps: bool,
             vad: bool, prompt: Optional[str], webhook: Optional[str],
             condition_on_previous_text: bool = False) -> JobOptions:
    if task not in ("transcribe", "translate"):
        raise typer.BadParameter("use transcribe or translate", param_hint="--task")
    return JobOptions(
        language=language, task=task, beam_size=beam_size, word_timestamps=word_timestamps,
        vad=vad, initial_prompt=prompt, webhook_url=webhook,
        condition_on_previous_text=condition_on_previous_text,
    )


# --- upload and follow ------------------------------------------------------------------


def _upload(c: Ctx, client: WhisperdClient, file: Path, options: JobOptions) -> Job:
    """Submit with a progress bar showing bytes and rate (stderr)."""
    columns = (
        TextColumn("uploading [bold]{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
    )
    size = file.stat().st_size
    bar = Progress(*columns, console=c.err, redirect_stdout=False, redirect_stderr=False)
    task = bar.add_task(escape(file.name), total=size)
    bar.start()

    def on_progress(sent: int, total: Optional[int]) -> None:
        if sent == 0:  # an attempt starts (again, after a retry): the rate starts over too
            bar.reset(task, total=total)
        else:
            bar.update(task, completed=sent)

    try:
        job = client.submit(file, options, on_upload_progress=on_progress)
    except BaseException as exc:
        # A failed upload leaves no bar behind (Progress.stop would add a blank line
        # when not on a terminal), only the error.
        bar.live.transient = True
        bar.live.stop()
        if isinstance(exc, KeyboardInterrupt):
            c.say("interrupted during the upload; no job was created")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        raise
    bar.update(task, completed=size)
    bar.stop()
    c.say(f"job {job.id} queued ({job.duration_secs:.1f} s of audio)")
    return job


class _Follower:
    """Shows a job's events: a live bar on a terminal; on anything else the bar's final
    state plus a line at every 10 %, so logs show the job moving."""

    def __init__(self, c: Ctx, label: str, segments_to_stdout: bool) -> None:
        self.c = c
        self.segments_to_stdout = segments_to_stdout
        self.shown = 0  # segments printed so far
        self.decile = -1
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), console=c.err, redirect_stdout=False, redirect_stderr=False,
        )
        self.task = self.bar.add_task(escape(label), total=100, status="")
        self.label = label

    def __enter__(self) -> _Follower:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def _progress(self, percent: float, status: str) -> None:
        self.bar.update(self.task, completed=percent, status=status)
        decile = int(percent // 10)
        if not self.c.err.is_terminal and decile > self.decile:
            self.decile = decile
            self.c.say(f"{self.label}: {percent:.0f}% ({status})")

    def _segment(self, segment: Segment) -> None:
        if segment.index < self.shown:
            return  # sent again after a requeue; already printed
        self.shown = segment.index + 1
        if not self.segments_to_stdout:
            if self.c.err.is_terminal:
                self.bar.console.print(escape(_segment_line(segment)), style="dim")
        elif sys.stdout.isatty() and self.c.err.is_terminal:
            self.bar.console.print(escape(_segment_line(segment)))  # above the bar, same screen
        else:
            self.c.emit(_segment_line(segment))

    def show(self, event: object) -> None:
        if isinstance(event, (Snapshot, Done)):
            for segment in event.job.segments:
                self._segment(segment)
            self._progress(event.job.progress, event.job.status.value)
        elif isinstance(event, ProgressUpdate):
            self._progress(event.percent, "running")
        elif isinstance(event, NewSegment):
            self._segment(event.segment)
        elif isinstance(event, Requeued):
            self.decile = -1
            self._progress(event.job.progress, "requeued")
            self.bar.console.print("the job went back to the queue (server restart or model unload); it will run again")


def _follow(c: Ctx, client: WhisperdClient, job: Job, *, label: str, segments_to_stdout: bool,
            offer_cancel: bool) -> Job:
    """Follow the job to its end; returns the final job. Ctrl-C: see _interrupted."""
    events = client.stream_progress(job.id)
    as_json = c.json and segments_to_stdout  # watch --json: the events themselves, nothing else
    try:
        with contextlib.nullcontext() if as_json else _Follower(c, label, segments_to_stdout) as follower:
            for event in events:
                if follower is None:
                    c.emit(to_json(event.pb, indent=None))
                else:
                    follower.show(event)
                if isinstance(event, Done):
                    return event.job
    except KeyboardInterrupt:
        events.close()
        _interrupted(c, client, job.id, offer_cancel)
    finally:
        events.close()
    return client.get(job.id)  # the stream ended without a final event


def _interrupted(c: Ctx, client: WhisperdClient, job_id: str, offer_cancel: bool) -> None:
    """Ctrl-C while following: ask whether to cancel (only when someone can answer)."""
    if offer_cancel and sys.stdin.isatty():
        try:
            cancel = Confirm.ask(f"cancel job {job_id}?", console=c.err, default=False)
        except (KeyboardInterrupt, EOFError):
            cancel = False
        if cancel:
            job = client.cancel(job_id)
            c.say(f"job {job_id} {job.status.value}")
            raise typer.Exit(EXIT_INTERRUPTED)
    c.say(f"stopped following; job {job_id} keeps running on the server "
          f"(whisperctl watch {job_id} / whisperctl cancel {job_id})")
    raise typer.Exit(EXIT_INTERRUPTED)


def _report_end(c: Ctx, job: Job) -> None:
    if job.status == JobStatus.DONE:
        took = (job.completed_at - job.started_at).total_seconds() if job.completed_at and job.started_at else 0.0
        c.say(f"job {job.id} done: {job.duration_secs:.1f} s of {job.language or '?'} audio "
              f"in {took:.1f} s, {len(job.segments)} segment{'' if len(job.segments) == 1 else 's'}")
    elif job.status == JobStatus.FAILED:
        c.say(f"job {job.id} failed: {job.error}", style="bold red")
    else:
        c.say(f"job {job.id} {job.status.value}" + (f": {job.error}" if job.error else ""), style="magenta")


# --- job commands -----------------------------------------------------------------------


@app.command()
def transcribe(
    ctx: typer.Context,
    file: FileArg,
    language: LanguageOpt = None,
    task: TaskOpt = "transcribe",
    fmt: Annotated[str, typer.Option("--format", "-f", help="txt, srt, vtt or json.")] = "txt",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the transcript here.")] = None,
    beam_size: BeamOpt = None,
    word_timestamps: WordsOpt = False,
    vad: VadOpt = False,
    prompt: PromptOpt = None,
    webhook: WebhookOpt = None,
    condition_on_previous_text: ConditionOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Upload FILE, follow the job, print the transcript: all in one step.

    Ctrl-C while following asks whether to cancel the job (without a terminal on stdin it does not ask: the job keeps running and its id is printed).
    """
    c = _ctx(ctx, json_output)
    name = _check_format(fmt)
    options = _options(language, task, beam_size, word_timestamps, vad, prompt, webhook,
                       condition_on_previous_text)
    with c.client() as client:
        job = _upload(c, client, file, options)
        final = _follow(c, client, job, label=file.name, segments_to_stdout=False, offer_cancel=True)
    _report_end(c, final)
    if final.status == JobStatus.DONE:
        text = final.render(name)
        if output is not None:
            _write_file(c, output, text)
            c.say(f"wrote {output}")
        if c.json:
            c.emit(final.to_json())
        elif output is None:
            c.emit(text)
    elif c.json:
        c.emit(final.to_json())
    raise typer.Exit(_status_exit(final))


@app.command()
def submit(
    ctx: typer.Context,
    file: FileArg,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    language: LanguageOpt = None,
    task: TaskOpt = "transcribe",
    beam_size: BeamOpt = None,
    word_timestamps: WordsOpt = False,
    vad: VadOpt = False,
    prompt: PromptOpt = None,
    webhook: WebhookOpt = None,
    condition_on_previous_text: ConditionOpt = False,
    request_id: Annotated[Optional[str], typer.Option(
        "--request-id",
        help="Idempotency key: running the command again with the same key returns the job the "
             "first run made instead of a second one (default: a fresh key, kept across this run's retries).",
    )] = None,
    json_output: JsonOpt = False,
) -> None:
    """Upload FILE and print the new job's id (with --wait: follow it to its end)."""
    c = _ctx(ctx, json_output)
    options = _options(language, task, beam_size, word_timestamps, vad, prompt, webhook,
                       condition_on_previous_text)
    if request_id:
        options = replace(options, request_id=request_id)
    with c.client() as client:
        job = _upload(c, client, file, options)
        if wait:
            job = _follow(c, client, job, label=file.name, segments_to_stdout=False, offer_cancel=False)
            _report_end(c, job)
    c.emit(job.to_json() if c.json else job.id)
    raise typer.Exit(_status_exit(job) if wait else 0)


@app.command()
def get(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id Submit returned.")],
    json_output: JsonOpt = False,
) -> None:
    """Show one job: its status, timings and segments."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        job = client.get(job_id)
    if c.json:
        c.emit(job.to_json())
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows = [
        ("id", job.id),
        ("status", f"[{_STATUS_STYLE[job.status]}]{job.status.value}[/]"),
        ("file", escape(job.options.filename or "-")),
        ("audio", f"{job.duration_secs:.1f} s"),
        ("language", f"{job.language or '-'}" + (f" (p={job.language_probability:.2f})" if job.language else "")),
        ("progress", f"{job.progress:.0f}%"),
        ("model", escape(job.model or "-")),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("completed", _when(job.completed_at)),
    ]
    if job.error:
        rows.append(("error", escape(job.error)))
    rows.extend(("warning", escape(w)) for w in job.warnings)
    for key, value in rows:
        grid.add_row(key, value)
    c.out.print(grid)
    for segment in job.segments:
        c.out.print(escape(_segment_line(segment)))


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[Optional[list[str]], typer.Option(
        "--status", help="Only jobs in this status (queued, running, done, failed, cancelled); "
        "repeat it or separate with commas.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many jobs.")] = 20,
    json_output: JsonOpt = False,
) -> None:
    """List jobs, newest first, as a table."""
    c = _ctx(ctx, json_output)
    try:
        statuses = [JobStatus.parse(s) for value in status or [] for s in value.split(",") if s.strip()]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--status") from None
    with c.client() as client:
        jobs = client.list(statuses, limit=limit, without_segments=True)
    if c.json:
        c.emit(json.dumps({"jobs": [json.loads(j.to_json(indent=None)) for j in jobs]}, indent=2))
        return
    if not jobs:
        c.say("no jobs" + (f" with status {', '.join(s.value for s in statuses)}" if statuses else ""))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", justify="right", no_wrap=True)
    table.add_column("AUDIO", justify="right", no_wrap=True)
    table.add_column("LANG", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("FILE", overflow="fold")
    for job in jobs:
        table.add_row(
            job.id, f"[{_STATUS_STYLE[job.status]}]{job.status.value}[/]", f"{job.progress:.0f}%",
            f"{job.duration_secs:.1f} s", job.language or "-", _when(job.created_at),
            escape(job.options.filename or "-"),
        )
    c.out.print(table)


@app.command()
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id Submit returned.")],
    json_output: JsonOpt = False,
) -> None:
    """Follow a job: a live progress bar, segments printed as they arrive.

    With --json: one JobEvent per line. The exit code tells how the job ended.
    """
    c = _ctx(ctx, json_output)
    with c.client() as client:
        job = client.get(job_id)
        final = _follow(c, client, job, label=job.options.filename or job.id[:8],
                        segments_to_stdout=True, offer_cancel=False)
    if not c.json:
        _report_end(c, final)
    raise typer.Exit(_status_exit(final))


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id Submit returned.")],
    json_output: JsonOpt = False,
) -> None:
    """Cancel a queued or running job."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        job = client.cancel(job_id)
    if c.json:
        c.emit(job.to_json())
    else:
        c.say(f"job {job.id} {job.status.value}")


@app.command()
def transcript(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id Submit returned.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="txt, srt, vtt or json.")] = "txt",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write it here.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Print a finished job's transcript, as the server renders it."""
    c = _ctx(ctx, json_output)
    name = _check_format(fmt)
    with c.client() as client:
        message = client.transcript_message(job_id, name)
    if output is not None:
        _write_file(c, output, message.content)
        c.say(f"wrote {output}")
    if c.json:
        c.emit(to_json(message))
    elif output is None:
        c.emit(message.content)


# --- health -----------------------------------------------------------------------------


@app.command()
def health(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Is the server serving? Also the model's state and the queue."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        serving = client.health()
        status = client.model_status()
    if c.json:
        c.emit(json.dumps({"status": serving.value, "model": json.loads(status.to_json())}, indent=2))
    else:
        c.out.print(f"{escape(c.address)}: [bold]{serving.value}[/]; model {escape(status.model)} "
                    f"{status.state.value} on {'GPU' if status.gpu else 'CPU'}; "
                    f"{status.queue_depth} queued, {status.running_jobs} running")
    raise typer.Exit(0 if serving.value == "SERVING" else EXIT_NOT_SERVING)


# `whisperctl model ...` and `whisperctl cluster` live in their own modules; importing
# them adds their commands to `app`.
from whisperd.client import cluster_cli as _cluster_cli  # noqa: E402,F401
from whisperd.client import model_cli as _model_cli  # noqa: E402,F401


# --- entry point ------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> None:
    """The `whisperctl` console script."""
    try:
        app(args=argv, prog_name="whisperctl")
    except WhisperdError as exc:
        message = str(exc)
        if "--json" in (argv if argv is not None else sys.argv[1:]):
            sys.stderr.write(json.dumps({"error": {"code": exc.code.name, "message": exc.details,
                                                   "exit_code": exc.exit_code}}) + "\n")
        else:
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"[bold red]error:[/] {escape(message)}"
            )
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    # Run as `python -m whisperd.client.cli`, this file is __main__, and the command
    # modules above added their commands to the app of the module they imported
    # (whisperd.client.cli): run that one.
    from whisperd.client.cli import main as _main

    _main()
