"""The REST gateway's Go unit tests (gateway/, `go test ./...`), run from pytest so that
the one test command (`make test`) covers them too. They need Go, as `make setup` does;
the Swagger UI files are not needed (the docs package builds without them)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"


def go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        pytest.fail("no Go toolchain on PATH: the gateway needs Go (see README, Quick start)")
    return found


def run_go(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    return subprocess.run(
        [go(), *args], cwd=GATEWAY, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_go_vet() -> None:
    result = run_go("vet", "./...", timeout=600)
    assert result.returncode == 0, f"go vet:\n{result.stdout}{result.stderr}"


def test_go_unit_tests() -> None:
    result = run_go("test", "-count=1", "./...", timeout=900)
    assert result.returncode == 0, f"go test:\n{result.stdout}{result.stderr}"
    assert "FAIL" not in result.stdout, result.stdout


def test_gofmt() -> None:
    gofmt = Path(go()).with_name("gofmt")
    result = subprocess.run([str(gofmt), "-l", "."], cwd=GATEWAY, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), (
        f"not gofmt-formatted (run gofmt -w):\n{result.stdout}{result.stderr}"
    )
