"""`whisperctl cluster`: the replicas that share the server's job store."""
from __future__ import annotations

import time

import typer
from rich.markup import escape
from rich.table import Table

from whisperd.client.cli import JsonOpt, _ctx, app
from whisperd.client.types import to_json
from whisperd.v1 import model_control_pb2 as mpb


def _state(value: int) -> str:
    return mpb.ModelState.Name(value).removeprefix("MODEL_STATE_").lower()


@app.command()
def cluster(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """The replicas sharing this server's job store: model state, device, running jobs,
    last heartbeat (one row for a server on its own SQLite store)."""
    c = _ctx(ctx, json_output)
    with c.client() as client:
        status = client.cluster()
    if c.json:
        c.emit(to_json(status))
        return
    table = Table(box=None, pad_edge=False)
    for name in ("replica", "address", "model", "state", "device", "running", "heartbeat"):
        table.add_column(name)
    now = time.time()
    for r in status.replicas:
        beat = r.heartbeat_at.seconds + r.heartbeat_at.nanos / 1e9
        device = r.device + (f" ({', '.join(r.gpus)})" if r.gpus else "")
        table.add_row(
            escape(r.host_id) + (" *" if r.self else ""), escape(r.address), escape(r.model),
            _state(r.state), escape(device), f"{len(r.running_job_ids)}/{r.parallel_jobs}",
            f"{max(0.0, now - beat):.0f} s ago",
        )
    c.out.print(table)
    store = f"shared store, lease {status.lease_secs} s" if status.shared_store else "own SQLite store"
    c.say(f"{len(status.replicas)} replica(s), {store}; {status.queue_depth} job(s) waiting; * = this one")
