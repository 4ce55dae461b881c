"""`rediss://`: a node process on a TLS-only redis-server, through its own wire and
pub/sub connection (`app/backends/rediswire/connect.py` builds the TLS socket from the
URL's `ssl_*` options, as redis-py would)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from signaling_client.client import SignalingClient

from tests.support.peers import barrier
from tests.support.procs import NodeProcess, free_port, terminate
from tests.support.wait import wait_until


def self_signed(dest: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = dest / "redis.crt", dest / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks only TLS; yields a `rediss://` URL that trusts it."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None
    proc = subprocess.Popen(
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli = ["redis-cli", "--tls", "--cacert", str(cert), "-p", str(port), "PING"]

    def answers() -> bool:
        return b"PONG" in subprocess.run(cli, capture_output=True).stdout
    try:
        wait_until(answers, 10, f"TLS redis-server on {port}")
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    finally:
        terminate(proc)


async def test_a_node_relays_and_broadcasts_through_a_tls_redis(tls_redis: str) -> None:
    nodes = [NodeProcess({"REDIS_URL": tls_redis, "KEY_PREFIX": "tls:"}).start()
             for _ in range(2)]
    try:
        a = await SignalingClient.connect(nodes[0].url, "room", "alice")
        b = await SignalingClient.connect(nodes[1].url, "room", "bob")
        await barrier([a, b])
        assert a.node != b.node  # the frames cross between nodes, over TLS both ways
        await a.offer("bob", {"sdp": "v=0"})
        offer = await b.next_of("offer")
        assert (offer.sender, offer.data) == ("alice", {"sdp": "v=0"})
        await b.chat("hi")
        assert (await a.next_of("chat")).data == "hi"
        await a.close()
        left = await b.next_of("peer-left")
        assert left.data == "alice"
        await b.close()
    finally:
        for node in nodes:
            node.stop()
