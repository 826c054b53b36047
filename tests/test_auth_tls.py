"""Bearer-token authentication and TLS on the server, through the bundled client."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from conftest import EXPECTED_JFK, normalise
from server_process import ServerProcess
from whisperd.client import WhisperdClient
from whisperd.client.types import HealthStatus
from whisperd.client.connection import NO_RETRY
from whisperd.v1 import transcription_pb2 as pb

TOKEN = "t0ken-for-tests"


def test_a_token_is_required_except_for_health(tiny_en_model: Path, tmp_path: Path, jfk_wav: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"AUTH_TOKEN": TOKEN}).start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            server.jobs.List(pb.ListJobsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            server.jobs.List(pb.ListJobsRequest(), metadata=[("authorization", "Bearer wrong")])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        address = f"127.0.0.1:{server.port}"
        with WhisperdClient(address, token=TOKEN) as client:
            assert client.health() == HealthStatus.SERVING
            job = client.submit(jfk_wav, beam_size=1)
            done = client.wait(job.id, timeout=120)
            assert normalise(done.transcript().text) == normalise(EXPECTED_JFK)
        with WhisperdClient(address, retry=NO_RETRY) as anonymous:
            assert anonymous.health() == HealthStatus.SERVING  # probes need no token
        assert not any(TOKEN in line for line in server.log_lines)
    finally:
        server.stop()


def test_tls_with_a_private_ca(tiny_en_model: Path, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a test certificate"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    server = ServerProcess(
        tmp_path / "data", tiny_en_model, env={"TLS_CERT": str(cert), "TLS_KEY": str(key)}
    ).start()
    try:
        assert any("TLS" in line for line in server.log_lines)
        with WhisperdClient(f"localhost:{server.port}", ca_file=cert) as client:
            assert client.health() == HealthStatus.SERVING
            assert client.list() is not None
        with pytest.raises(grpc.RpcError):  # a plaintext client cannot talk to it
            server.jobs.List(pb.ListJobsRequest(), timeout=5)
    finally:
        server.stop()


def test_tls_settings_go_together(tiny_en_model: Path, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tiny_en_model, env={"TLS_CERT": str(tiny_en_model)})
    with pytest.raises(RuntimeError):
        server.start(timeout=30)
    assert server.proc is not None and server.proc.wait(10) == 2
    assert any("TLS_CERT and TLS_KEY go together" in line for line in server.log_lines)
