"""A throw-away PKI for the TLS tests, made with ``cryptography`` at test time.

``root`` signs ``intermediate``, which signs the server certificate (for 127.0.0.1, ::1 and
localhost): the server must send the intermediate (``extraCertChain``) for a client trusting
only the root to accept it.  ``client_ca`` signs the good client certificate; ``rogue_ca``, which
the server does not trust, signs another with the same subject.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_SUBJECT = "CN=sensor-1,O=twisted_mqtt tests"
Issuer = Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _name(common_name: str, organisation: str = "twisted_mqtt tests") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: Optional[Issuer],
                 ca: bool, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert is not None else subject)
               .public_key(public)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class PKI:
    """Paths of the PEM files made by ``make_pki``."""

    root: Path
    intermediate: Path
    server_cert: Path
    server_key: Path
    server_spki_sha256: str
    """Base64 SHA-256 of the server's SubjectPublicKeyInfo (for Chromium's SPKI allow-list)."""
    client_ca: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def make_pki(directory: Path) -> PKI:
    """Write the CAs, the server and the client certificates and keys under ``directory``."""

    def write_cert(name: str, certificate: x509.Certificate) -> Path:
        path = directory / f"{name}.pem"
        path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def write_key(name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = directory / f"{name}.key"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    root_key, intermediate_key, server_key = _key(), _key(), _key()
    root = _certificate(_name("test root CA"), root_key, None, ca=True)
    intermediate = _certificate(_name("test intermediate CA"), intermediate_key,
                                (root, root_key), ca=True)
    server = _certificate(_name("127.0.0.1"), server_key, (intermediate, intermediate_key),
                          ca=False, server=True)
    client_ca_key, client_key, rogue_ca_key, rogue_key = _key(), _key(), _key(), _key()
    client_ca = _certificate(_name("test client CA"), client_ca_key, None, ca=True)
    client = _certificate(_name("sensor-1"), client_key, (client_ca, client_ca_key), ca=False)
    rogue_ca = _certificate(_name("rogue CA", "elsewhere"), rogue_ca_key, None, ca=True)
    rogue = _certificate(_name("sensor-1"), rogue_key, (rogue_ca, rogue_ca_key), ca=False)
    spki = server.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return PKI(
        root=write_cert("root", root),
        intermediate=write_cert("intermediate", intermediate),
        server_cert=write_cert("server", server),
        server_key=write_key("server", server_key),
        server_spki_sha256=base64.b64encode(hashlib.sha256(spki).digest()).decode(),
        client_ca=write_cert("client-ca", client_ca),
        client_cert=write_cert("client", client),
        client_key=write_key("client", client_key),
        rogue_cert=write_cert("rogue", rogue),
        rogue_key=write_key("rogue", rogue_key),
    )


def mqtts_endpoint(pki: PKI, *options: str) -> str:
    """An ``mqtts:`` endpoint on a loopback ephemeral port serving the test server certificate
    with its intermediate, plus ``options`` (e.g. ``caFile=...``, ``verify=optional``)."""
    parts = ["mqtts:0:interface=127.0.0.1", f"privateKey={pki.server_key}",
             f"certKey={pki.server_cert}", f"extraCertChain={pki.intermediate}", *options]
    return ":".join(parts)
