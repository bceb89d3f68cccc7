"""TLS on the router's front doors (`hfx router --tls-cert --tls-key`): a router beside a live
cluster (`hfx up` on SIMULATED workers) serves gRPC and HTTPS to clients that trust its
certificate, and a plain-text client gets nothing. The certificate is a fresh self-signed one made
with the system's openssl."""

from __future__ import annotations

import ssl
import subprocess

import grpc
import httpx
import pytest

from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.harness import extra_router, local_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return folder / "cert.pem", folder / "key.pem"


def test_a_tls_router_serves_clients_that_trust_it_and_refuses_plain_text(tmp_path, certificate):
    cert, key = certificate
    trusting = ssl.create_default_context(cafile=str(cert))

    def https_health(router) -> bool:
        try:
            return httpx.get(f"https://127.0.0.1:{router.http_port}/health", verify=trusting, timeout=2).is_success
        except httpx.TransportError:
            return False

    with local_cluster(tmp_path / "home", workers=1, engine="sim") as mesh, \
            extra_router(mesh, "--tls-cert", str(cert), "--tls-key", str(key), ready=https_health) as router:
        port, http_port = router.port, router.http_port
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            messages = list(router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
                token_ids=router_pb2.TokenIds(ids=[5, 6, 7]),
                sampling=common_pb2.SamplingParams(max_tokens=4, ignore_eos=True)), timeout=30))
        assert messages[-1].final.usage.completion_tokens == 4

        served = httpx.post(f"https://127.0.0.1:{http_port}/v1/completions", verify=trusting, timeout=30,
                            json={"prompt": "hello", "max_tokens": 4})
        assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 4

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as plain:
            list(router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(
                token_ids=router_pb2.TokenIds(ids=[5, 6, 7])), timeout=5))
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=5)
        with pytest.raises(httpx.TransportError):   # a client that does not trust the certificate
            httpx.get(f"https://127.0.0.1:{http_port}/health", timeout=5)
