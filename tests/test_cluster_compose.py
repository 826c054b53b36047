"""docker-compose.yml's `cluster` profile holds together: replicas that read only settings
whisperd knows, pointed at the PostgreSQL and object store services of the same file,
with the bucket the init service creates and the credentials the object store takes.
(Docker itself is not run here; docs/scaling.md says so.)"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from whisperd.server import config

ROOT = Path(__file__).resolve().parent.parent


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_cluster_profile_replicas_reach_its_database_and_object_store() -> None:
    s = services()
    replica, postgres, objects, bucket = (
        s["whisperd-replica"], s["postgres"], s["objects"], s["objects-bucket"]
    )
    for svc in (replica, postgres, objects, bucket):
        assert svc["profiles"] == ["cluster"]
    assert "profiles" not in s["whisperd"], "the single-host service stays the default"
    assert replica["deploy"]["replicas"] >= 2

    env = replica["environment"]
    known = set(config._ENV.values()) | {"WHISPERD_MODELS_DIR", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
    assert not set(env) - known, f"replicas set {sorted(set(env) - known)}, which whisperd does not read"
    settings = config.from_env({k: str(v) for k, v in env.items() if k in config._ENV.values()})
    assert settings.lease_secs >= 3 and settings.blob_url.startswith("s3://")

    db = urlsplit(env["DATABASE_URL"])
    pg_env = postgres["environment"]
    assert db.hostname == "postgres" and db.port == 5432
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    )

    command = objects["command"]
    endpoint = urlsplit(env["S3_ENDPOINT_URL"])
    assert endpoint.hostname == "objects" and f":{endpoint.port}" == command[command.index("--port") + 1]
    assert command[command.index("--access") + 1] == env["AWS_ACCESS_KEY_ID"]
    assert command[command.index("--secret") + 1] == env["AWS_SECRET_ACCESS_KEY"]
    assert objects["image"] == "versity/versitygw:v1.8.0"

    script = bucket["command"][0]
    bucket_name = env["BLOB_URL"][len("s3://"):].split("/")[0]
    assert f'Bucket="{bucket_name}"' in script and env["S3_ENDPOINT_URL"] in script
    assert replica["depends_on"]["objects-bucket"]["condition"] == "service_completed_successfully"
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
