"""TLS to the broker with certificates from a throwaway CA: verified, and refused when not trusted."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from shared.envelope import Envelope
from shared.messages import REGISTRY, Ping
from shared.mqtt import MqttMetrics, MqttSession, MqttSettings


def _cert(subject: str, issuer_key: Any, issuer_name: x509.Name | None, key: Any, *, ca: bool,
          san_ip: str | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san_ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san_ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: Any = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    path.chmod(0o644)
    return path


def _make_ca(d: Path) -> tuple[Path, Path, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("nearcast test CA", ca_key, None, ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("127.0.0.1", ca_key, ca.subject, srv_key, ca=False, san_ip="127.0.0.1")
    return _write(d / "ca.pem", ca), _write(d / "server.pem", srv), _write(d / "server.key", key=srv_key)


async def test_tls_connection_verified_against_the_ca(private_mosquitto: Any) -> None:
    broker = private_mosquitto
    ca, cert, key = _make_ca(broker.workdir)
    other_ca, _, _ = _make_ca(_fresh(broker.workdir / "other"))
    broker.stop()
    broker.extra_config = (f"allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                           "require_certificate false\n")
    await asyncio.to_thread(broker.start)

    got: list[Envelope[Any]] = []

    async def handler(env: Envelope[Any], topic: str) -> None:
        got.append(env)

    good = MqttSession(MqttSettings(port=broker.port, tls=True, tls_ca_file=ca), client_id="tls-good",
                       registry=REGISTRY, metrics=MqttMetrics(CollectorRegistry()))
    good.subscribe("tls/test", handler)
    await good.start()
    try:
        await asyncio.wait_for(good.connected.wait(), 10)
        await good.publish("tls/test", Ping("secret"))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        assert got and got[0].body == Ping("secret")
    finally:
        await good.stop()

    # A client that trusts another CA refuses the broker's certificate: it never connects.
    bad = MqttSession(MqttSettings(port=broker.port, tls=True, tls_ca_file=other_ca, reconnect_min_s=0.2),
                      client_id="tls-bad", registry=REGISTRY, metrics=MqttMetrics(CollectorRegistry()))
    await bad.start()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bad.connected.wait(), 2)
    finally:
        await bad.stop()
    # And a plain-text client gets nowhere on the TLS listener.
    plain = MqttSession(MqttSettings(port=broker.port, reconnect_min_s=0.2), client_id="plain",
                        registry=REGISTRY, metrics=MqttMetrics(CollectorRegistry()))
    await plain.start()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(plain.connected.wait(), 2)
    finally:
        await plain.stop()


def _fresh(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o777)
    return d
