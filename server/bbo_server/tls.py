"""TLS for the gRPC port: server credentials from PEM files, optionally requiring client
certificates signed by a given CA (mutual TLS)."""

from __future__ import annotations

import ssl

import grpc


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def _check_pem(cert: str, key: str, client_ca: str | None) -> None:
    """Refuse files that are not a PEM certificate chain and its (unencrypted) private key, or a
    PEM CA: gRPC only says so in its own log, and then fails to bind the port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # judge the files' form, not the keys' strength
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as e:
        raise ValueError(
            f"--tls-cert {cert!r} and --tls-key {key!r} are not a PEM certificate chain and its "
            f"unencrypted private key ({e.reason or e})"
        ) from None
    if client_ca:
        try:
            ctx.load_verify_locations(client_ca)
        except ssl.SSLError as e:
            raise ValueError(
                f"--tls-client-ca {client_ca!r} holds no PEM CA certificate ({e.reason or e})"
            ) from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with ``cert`` / ``key`` (PEM); with ``client_ca`` every client must present a certificate
    signed by that CA (mutual TLS)."""
    if not cert or not key:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    ca = _read(client_ca, "client CA")
    key_pem, cert_pem = _read(key, "TLS key"), _read(cert, "TLS certificate")
    _check_pem(cert, key, client_ca)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )
