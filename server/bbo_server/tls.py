"""TLS for the gRPC port: server credentials from PEM files, optionally requiring client
certificates signed by a given CA (mutual TLS)."""

from __future__ import annotations

import grpc


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with ``cert`` / ``key`` (PEM); with ``client_ca`` every client must present a certificate
    signed by that CA (mutual TLS)."""
    if not cert or not key:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    ca = _read(client_ca, "client CA")
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
