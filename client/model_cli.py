"""`whisperctl model ...`: the server's model: status, load, unload (per GPU too), watch."""
from __future__ import annotations

from typing import Annotated, Iterator, Optional

import typer
from rich.markup import escape
from rich.table import Table

from whisperd.client.cli import EXIT_FAILED, EXIT_INTERRUPTED, Ctx, JsonOpt, _ctx, _when, app
from whisperd.client.sync_client import WhisperdClient
from whisperd.client.types import ModelEvent, ModelState, ModelStatus, to_json

model_app = typer.Typer(help="The server's model: status, load, unload, watch.", no_args_is_help=True)
app.add_typer(model_app, name="model")

GpuOpt = Annotated[
    Optional[list[int]],
    typer.Option("--gpu", metavar="INDEX", help="Only this GPU's model (a server with several, GPU_DEVICES); repeatable. Default: every GPU."),
]


def _print_model_status(c: Ctx, status: ModelStatus) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("state", status.state.value)
    grid.add_row("model", escape(status.model))
    grid.add_row("path", escape(status.model_path))
    grid.add_row("loaded", _when(status.loaded_at))
    grid.add_row("idle timeout", f"{status.idle_timeout_secs} s" if status.idle_timeout_secs else "never")
    grid.add_row("queue", f"{status.queue_depth} waiting, {status.running_jobs} running")
    grid.add_row("device", "GPU" if status.gpu else "CPU")
    for g in status.gpus:
        grid.add_row(f"gpu {g.index}", f"{escape(g.name)}: {g.memory_used_bytes / 2**30:.1f} / "
                     f"{g.memory_total_bytes / 2**30:.1f} GiB used")
    if status.last_error:
        grid.add_row("last error", escape(status.last_error))
    c.out.print(grid)


def _print_model_state(c: Ctx, status: ModelStatus) -> None:
    if c.json:
        c.emit(status.to_json())
    else:
        devices = ", ".join(f"gpu {d.gpu_index} {ModelState.from_pb(d.state).value}" for d in status.pb.devices)
        c.say(f"model {status.model}: {status.state.value}" + (f" ({devices})" if devices else ""))


def _event_line(event: ModelEvent) -> str:
    moved = f"{event.previous.value} -> {event.state.value}" if event.previous != ModelState.UNSPECIFIED else event.state.value
    return f"{_when(event.time)}  {moved}" + (f"  ({event.reason})" if event.reason else "")


@model_app.command("status")
def model_status(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """The model's state, GPU memory and the queue."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        status = client.model_status()
    if c.json:
        c.emit(status.to_json())
    else:
        _print_model_status(c, status)


@model_app.command("load")
def model_load(
    ctx: typer.Context,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the model is ready.")] = False,
    gpu: GpuOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Start loading the model (idempotent)."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        status = client.load_model(gpus=gpu or ())
        if wait and gpu:
            status = _wait_for_gpus(c, client, status, gpu)
        elif wait and status.state != ModelState.READY:
            for event in _events(client.watch_model()):
                if not c.json:
                    c.say(_event_line(event))
                status = event.status
                if event.state == ModelState.READY:
                    break
                if event.state == ModelState.UNLOADED and event.status.last_error:
                    c.say(f"the load failed: {event.status.last_error}", style="bold red")
                    raise typer.Exit(EXIT_FAILED)
    _print_model_state(c, status)


def _wait_for_gpus(c: Ctx, client: WhisperdClient, status: ModelStatus, gpus: list[int]) -> ModelStatus:
    """Until each of these GPUs' models is ready (load --wait --gpu); exit 3 if one fails."""
    def settled(s: ModelStatus) -> bool:
        if not s.pb.devices:  # one GPU: the top level is its state
            return s.state == ModelState.READY
        devices = {d.gpu_index: d for d in s.pb.devices}
        for i in gpus:
            d = devices.get(i)
            if d is not None and ModelState.from_pb(d.state) == ModelState.UNLOADED and d.last_error:
                c.say(f"the load on gpu {i} failed: {d.last_error}", style="bold red")
                raise typer.Exit(EXIT_FAILED)
        return all(i in devices and ModelState.from_pb(devices[i].state) == ModelState.READY for i in gpus)

    if settled(status):
        return status
    for event in _events(client.watch_model()):
        if not c.json:
            c.say(_event_line(event))
        if settled(status := event.status):
            break
    return status


@model_app.command("unload")
def model_unload(ctx: typer.Context, gpu: GpuOpt = None, json_output: JsonOpt = False) -> None:
    """Unload the model now and free its memory (a running job goes back to the queue); --gpu: only those GPUs'."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        status = client.unload_model(gpus=gpu or ())
    _print_model_state(c, status)


@model_app.command("watch")
def model_watch(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Print lifecycle events as they happen, until Ctrl-C."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        for event in _events(client.watch_model()):
            c.emit(to_json(event.pb, indent=None) if c.json else _event_line(event))


def _events(stream: Iterator[ModelEvent]) -> Iterator[ModelEvent]:
    try:
        yield from stream
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        stream.close()  # type: ignore[attr-defined]
