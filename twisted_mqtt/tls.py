"""TLS: the ``mqtts:`` server endpoint (client certificates checked against a CA file) and the
peer certificate's subject, handed to authentication hooks in ``ClientInfo``.

``mqtts:PORT:privateKey=KEY.pem[:certKey=CERT.pem][:extraCertChain=CHAIN.pem]
[:caFile=CA.pem][:verify=none|optional|required][:interface=ADDRESS][:backlog=N]
[:dhParameters=DH.pem]``

``verify`` defaults to ``required`` when ``caFile`` is given and ``none`` otherwise; ``optional``
asks for a client certificate and verifies one if sent, ``required`` refuses the handshake
without one.  OpenSSL is imported only when such an endpoint is parsed, because Twisted imports
every endpoint parser plugin whenever it parses any endpoint string.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

VERIFY_MODES = ("none", "optional", "required")


def certificate_subject(transport: Any) -> Tuple[Optional[str], Optional[str]]:
    """The peer certificate's subject as an RFC 4514 string and its common name (CN), or
    ``(None, None)`` when the transport is not TLS or the peer sent no certificate."""
    get_certificate = getattr(transport, "getPeerCertificate", None)
    certificate = get_certificate() if get_certificate is not None else None
    if certificate is None:
        return None, None
    from cryptography.x509.oid import NameOID

    subject = certificate.to_cryptography().subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = names[0].value if names else None
    if isinstance(common_name, bytes):
        common_name = common_name.decode("utf-8", "replace")
    return subject.rfc4514_string(), common_name


def _load_certificates(path: str) -> list:
    from cryptography.x509 import load_pem_x509_certificates
    from OpenSSL.crypto import X509

    with open(path, "rb") as pem:
        certificates = load_pem_x509_certificates(pem.read())
    return [X509.from_cryptography(c) for c in certificates]


def tls_options(privateKey: str, certKey: Optional[str] = None,
                extraCertChain: Optional[str] = None, caFile: Optional[str] = None,
                verify: Optional[str] = None, dhParameters: Optional[str] = None) -> Any:
    """``CertificateOptions`` for a TLS server from PEM files (the ``mqtts:`` parameters)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL.crypto import PKey
    from twisted.internet import ssl
    from twisted.python.filepath import FilePath

    mode = verify if verify is not None else ("required" if caFile else "none")
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {mode!r}")
    if mode != "none" and not caFile:
        raise ValueError(f"verify={mode} needs caFile=")
    with open(privateKey, "rb") as pem:
        private_key: Any = load_pem_private_key(pem.read(), None)
    key = PKey.from_cryptography_key(private_key)
    certificates = _load_certificates(certKey or privateKey)
    if not certificates:
        raise ValueError(f"no certificate in {certKey or privateKey}")
    chain = certificates[1:] + (_load_certificates(extraCertChain) if extraCertChain else [])
    kwargs: dict = {}
    if dhParameters is not None:
        kwargs["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(FilePath(dhParameters))
    if mode != "none":
        assert caFile is not None
        kwargs.update(verify=True, caCerts=_load_certificates(caFile),
                      requireCertificate=mode == "required")
    return ssl.CertificateOptions(privateKey=key, certificate=certificates[0],
                                  extraCertChain=chain or None, **kwargs)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MQTTSServerParser:
    """Parses ``mqtts:`` server endpoint strings (see the module docstring)."""

    prefix = "mqtts"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> IStreamServerEndpoint:
        """An ``SSL4ServerEndpoint`` for ``mqtts:PORT:...``."""
        return self._parse(reactor, *args, **kwargs)

    def _parse(self, reactor: Any, port: str, privateKey: str, certKey: Optional[str] = None,
               extraCertChain: Optional[str] = None, caFile: Optional[str] = None,
               verify: Optional[str] = None, interface: str = "", backlog: str = "50",
               dhParameters: Optional[str] = None) -> IStreamServerEndpoint:
        from twisted.internet.endpoints import SSL4ServerEndpoint

        options = tls_options(privateKey, certKey, extraCertChain, caFile, verify, dhParameters)
        return SSL4ServerEndpoint(reactor, int(port), options, int(backlog), interface)
