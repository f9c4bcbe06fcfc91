"""TLS: a node listening on an ``ssl:`` endpoint (docs/protocol.md section 10) serves
``wss://`` and ``https://``, checked with the independent ``websockets`` and ``httpx``
clients trusting a self-signed certificate made for the test."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl

import attrs
import httpx
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Config
from gateway.testing import DEFAULT_TIMEOUT, WSClient, aio


def self_signed(directory):
    """Write key.pem and cert.pem for localhost / 127.0.0.1; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def escape(path) -> str:
    """A path as a value in an endpoint description (``:`` and ``\\`` escaped)."""
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


@pytest_twisted.async_yield_fixture
async def tls_node(tmp_path):
    """A node listening on ssl:0 on 127.0.0.1 only; yields (https base, wss url, client ssl context)."""
    from gateway.service import GatewayService

    key, cert = self_signed(tmp_path)
    listen = f"ssl:0:interface=127.0.0.1:privateKey={escape(key)}:certKey={escape(cert)}"
    service = GatewayService(attrs.evolve(Config(), listen=(listen,), drain_timeout=2.0))
    service.startService()
    try:
        port = service.ports[0].getHost().port
        context = ssl.create_default_context(cafile=str(cert))
        yield f"https://127.0.0.1:{port}", f"wss://127.0.0.1:{port}/ws", context
    finally:
        await service.stopService()


async def test_wss_subscribe_and_https_publish(tls_node):
    """Over TLS: a wss:// subscriber gets what an https:// POST /publish published."""
    base, ws_url, context = tls_node
    ws = await WSClient.connect(ws_url, ssl=context)
    try:
        subscribed = await ws.request({"type": "subscribe", "channel": "secure", "id": 1})
        assert subscribed["type"] == "subscribed"

        async def publish():
            async with httpx.AsyncClient(verify=context, timeout=DEFAULT_TIMEOUT) as client:
                return await client.post(base + "/publish", json={"channel": "secure", "data": "over TLS"})

        response = await aio(publish())
        assert response.status_code == 200
        assert response.json()["seq"] == 1
        message = await ws.recv()
        assert (message["type"], message["data"], message["seq"]) == ("message", "over TLS", 1)
    finally:
        await ws.close()


async def test_https_sse_and_poll(tls_node):
    """SSE and long-polling work over https://, and health answers there too."""
    base, _, context = tls_node

    async def scenario():
        async with httpx.AsyncClient(verify=context, timeout=DEFAULT_TIMEOUT) as client:
            health = await client.get(base + "/healthz")
            poll = await client.get(base + "/poll?channel=s&timeout=0")
            async with client.stream("GET", base + "/sse?channel=s") as stream:
                assert stream.headers["content-type"] == "text/event-stream"
                published = await client.post(base + "/publish", json={"channel": "s", "data": 7})
                data = None
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        data = json.loads(line[len("data: ") :])
                        break
            return health, poll, published, data

    health, poll, published, data = await aio(scenario())
    assert health.json()["status"] == "ok"
    assert poll.status_code == 200 and poll.json()["messages"] == []
    assert published.status_code == 200
    assert (data["type"], data["data"]) == ("message", 7)


async def test_tls_listener_refuses_clients_that_do_not_trust_the_certificate(tls_node):
    """The listener really is TLS with that certificate: a client with the default trust
    store refuses it (and the node survives the failed handshake)."""
    base, _, context = tls_node

    async def untrusting():
        async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT) as client:
            await client.get(base + "/healthz")

    with pytest.raises(httpx.ConnectError):
        await aio(untrusting())

    async def trusting():
        async with httpx.AsyncClient(verify=context, timeout=DEFAULT_TIMEOUT) as client:
            return await client.get(base + "/readyz")

    assert (await aio(trusting())).status_code == 200
