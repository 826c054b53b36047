"""A single server on its embedded defaults (SQLite, local files) must start without the
`cluster` extra's packages (psycopg, psycopg-pool, boto3): hosts that never share a
PostgreSQL store do not install them."""
from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys\nfor m in ('psycopg', 'psycopg_pool', 'boto3'): sys.modules[m] = None\n"


def test_the_server_imports_without_the_cluster_extra() -> None:
    code = BLOCK + (
        "import whisperd.server.app, whisperd.server.cluster as c\n"
        "from whisperd.server.jobs.store import JobStore\n"
        "print(c.is_shared(object()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
