"""lesiond over TLS, end to end, with a certificate made here: the Python client and the `lesion` CLI
connect when they trust it and are refused when they do not (or speak plaintext); the gRPC health
service answers for lesion.v1.Lesion.

Env: LESIOND, LESION_CLI (conftest.py). Needs the openssl command to make the certificates."""

import os
import shutil
import subprocess

import pytest

from conftest import CLI, CLI_MISSING, STORIES, LesiondProcess, requires_lesiond

pytestmark = [requires_lesiond, pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")]

TOKENS = "tls-alice alice user\n"


def make_certificate(directory, name):
    """A self-signed certificate (and its key) for localhost and 127.0.0.1, valid for a day."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A lesiond serving TLS with its own certificate and a tokens file; yields (server, cert, other)
    where `other` is a certificate the server does not use."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(tmp, "lesiond")
    other, _ = make_certificate(tmp, "impostor")
    tokens = tmp / "tokens"
    tokens.write_text(TOKENS)
    tokens.chmod(0o600)
    server = LesiondProcess(
        tmp, "--model", f"stories={STORIES}", "--tls-cert", cert, "--tls-key", key, "--tokens-file", tokens
    )
    yield server, cert, other
    server.stop()


def test_python_client_over_tls(tls_server):
    from lesion import Client, LesionError

    grpc = pytest.importorskip("grpc")
    server, cert, other = tls_server

    with Client(server.address, token="tls-alice", root_certificates=cert.read_bytes(), timeout=30) as client:
        assert [m["name"] for m in client.models()] == ["stories"]

    # The token is still required over TLS.
    with Client(server.address, root_certificates=cert.read_bytes(), timeout=30) as client:
        with pytest.raises(LesionError) as e:
            client.models()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED

    # A certificate the client does not trust, or plaintext, never gets through.
    for kwargs in ({"root_certificates": other.read_bytes()}, {}):
        with Client(server.address, token="tls-alice", timeout=5, **kwargs) as client:
            with pytest.raises(LesionError) as e:
                client.models()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE, kwargs


def cli(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESION_")}
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.skipif(CLI_MISSING is not None, reason=CLI_MISSING or "")
def test_cli_over_tls(tls_server, tmp_path):
    server, cert, other = tls_server
    connect = ("--server", server.address, "--token", "tls-alice", "--timeout", "5")

    listed = cli("models", "--json", "--tls-ca", cert, *connect)
    assert listed.returncode == 0, listed.stderr
    assert '"stories"' in listed.stdout

    # $LESION_TLS_CA does the same as --tls-ca.
    env_listed = subprocess.run(
        [str(CLI), "models", *connect],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LESION_TLS_CA": str(cert)},
    )
    assert env_listed.returncode == 0, env_listed.stderr

    # Plaintext to a TLS server: unreachable, and the message says what to try.
    plain = cli("models", *connect)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr and "--tls" in plain.stderr, plain.stderr

    # A certificate signed by nobody the client trusts.
    untrusted = cli("models", "--tls-ca", other, *connect)
    assert untrusted.returncode == 1 and "over TLS" in untrusted.stderr, untrusted.stderr
    system_roots = cli("models", "--tls", *connect)
    assert system_roots.returncode == 1 and "over TLS" in system_roots.stderr, system_roots.stderr

    missing = cli("models", "--tls-ca", tmp_path / "nope.pem", *connect)
    assert missing.returncode == 2 and "--tls-ca" in missing.stderr, missing.stderr


def test_health_reports_the_lesion_service(tls_server):
    grpc = pytest.importorskip("grpc")
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2", reason="needs grpcio-health-checking")
    from grpc_health.v1 import health_pb2_grpc

    server, cert, _ = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(server.address, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lesion.v1.Lesion"):
            # Health checks need no token: probes have none.
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as e:
            health.Check(health_pb2.HealthCheckRequest(service="lesion.v1.Nothing"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
