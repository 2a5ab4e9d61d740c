"""TLS for the client's model-server connections: gRPC (`grpc.ssl_channel_credentials`) and
REST over HTTPS (an `ssl.SSLContext`), with optional client certificates (mutual TLS).

The server's certificate is always verified: against `ca_file` when given, else against the
system's trust store. A client certificate (`cert_file` + `key_file`) is sent when the
server asks for one (TF Serving's SSLConfig `client_verify: true`).
"""

from __future__ import annotations

import argparse
import dataclasses
import ssl
from pathlib import Path

import grpc

from client.errors import InvalidRequest


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """PEM files for a TLS connection to the model server; all optional.

    Args:
        ca_file: CA certificate(s) that signed the server's certificate (None: system roots).
        cert_file: client certificate chain, for mutual TLS (needs `key_file`).
        key_file: the client certificate's private key.
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidRequest("a client certificate needs both a certificate and its key "
                                 "(--tls_cert and --tls_key), or neither")

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA certificate (--tls_ca)"),
            private_key=_read(self.key_file, "client key (--tls_key)"),
            certificate_chain=_read(self.cert_file, "client certificate (--tls_cert)"))

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the server's certificate and host name."""
        _read(self.ca_file, "CA certificate (--tls_ca)")  # a missing file: InvalidRequest
        try:
            context = ssl.create_default_context(
                cafile=None if self.ca_file is None else str(self.ca_file))
            if self.cert_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (ssl.SSLError, OSError) as err:
            raise InvalidRequest(f"cannot load the TLS files ({err}); --tls_ca, --tls_cert "
                                 "and --tls_key must be PEM files, the key matching the "
                                 "certificate") from None
        return context


def _read(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InvalidRequest(f"cannot read the {what} {str(path)!r}: {err.strerror}") from None
    if b"-----BEGIN" not in data:
        raise InvalidRequest(f"the {what} {str(path)!r} is not a PEM file")
    return data


def add_tls_args(group) -> None:
    """The TLS flags every CLI that talks to the model server shares (`--tls`, `--tls_ca`,
    `--tls_cert`, `--tls_key`), on an argparse parser or group; read them with
    `tls_from_args`."""
    group.add_argument("--tls", action="store_true",
                       help="use TLS, verifying the server against the system's trust store")
    group.add_argument("--tls_ca", metavar="PEM", help="CA certificate that signed the server's")
    group.add_argument("--tls_cert", metavar="PEM",
                       help="client certificate for mutual TLS (with --tls_key)")
    group.add_argument("--tls_key", metavar="PEM", help="the client certificate's private key")


def tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS settings the `add_tls_args` flags ask for (None: plaintext)."""
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    return TlsConfig(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key)
