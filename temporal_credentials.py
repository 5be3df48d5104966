"""What a process presents to Temporal: the TLS files and the API key its settings name, read
and checked.

Apart from temporal_client.py, which connects with them, so that config.py can check them when
the settings are read (a file that cannot work stops the process at start, the setting named)
without the settings importing the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from temporalio.service import TLSConfig


class CredentialSettings(Protocol):
    """The settings `read_credentials` reads: config.Settings's TEMPORAL_TLS* and
    TEMPORAL_API_KEY_FILE (named by their type, not imported: config.py imports this module)."""

    temporal_tls: bool | None
    temporal_tls_ca_file: Path | None
    temporal_tls_server_name: str
    temporal_tls_cert_file: Path | None
    temporal_tls_key_file: Path | None
    temporal_api_key_file: Path | None


@dataclass(frozen=True)
class Credentials:
    """What this client presents to Temporal, read and checked from the files its settings name."""

    # None: a plain connection. Neither is shown by repr: the TLS configuration holds the
    # private key.
    tls: TLSConfig | None = field(repr=False)
    api_key: str | None = field(repr=False)
    # The client certificate (mTLS), and where each thing came from, for the messages.
    certificate: x509.Certificate | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    api_key_file: Path | None = None
    server_name: str = ""

    def presented(self) -> str:
        """What this client shows the server, for a message about a refusal."""
        shown = []
        if self.certificate is not None:
            shown.append(
                f"the client certificate {self.certificate.subject.rfc4514_string()} issued by "
                f"{self.certificate.issuer.rfc4514_string()} (TEMPORAL_TLS_CERT_FILE="
                f"{self.cert_file})"
            )
        if self.api_key is not None:
            shown.append(f"the API key in TEMPORAL_API_KEY_FILE={self.api_key_file}")
        return " and ".join(shown) or "no client certificate and no API key"

    def describe(self) -> str:
        """The connection in a few words, for the log."""
        if self.tls is None:
            return "plain" + (", API key (TEMPORAL_TLS=false)" if self.api_key else "")
        trusted = f"the CA in {self.ca_file}" if self.ca_file else "the system's CAs"
        described = [f"TLS, the server checked against {trusted}"]
        if self.server_name:
            described[0] += f" as {self.server_name}"
        if self.certificate is not None:
            described.append(f"client certificate {self.certificate.subject.rfc4514_string()}")
        if self.api_key is not None:
            described.append("API key")
        return ", ".join(described)


def read_credentials(settings: CredentialSettings) -> Credentials:
    """The TLS configuration and the API key the settings name, their files read and checked.

    Raises:
        ValueError: A setting that cannot work, naming the setting and its file: a file missing,
            unreadable or not PEM, a key that is not the certificate's, a client certificate out
            of its validity, half of mTLS, TLS settings with TEMPORAL_TLS=false.
    """
    ca_file, cert_file = settings.temporal_tls_ca_file, settings.temporal_tls_cert_file
    key_file, server_name = settings.temporal_tls_key_file, settings.temporal_tls_server_name
    tls_settings = [
        name
        for name, value in (
            ("TEMPORAL_TLS_CA_FILE", ca_file),
            ("TEMPORAL_TLS_SERVER_NAME", server_name),
            ("TEMPORAL_TLS_CERT_FILE", cert_file),
            ("TEMPORAL_TLS_KEY_FILE", key_file),
        )
        if value
    ]
    if settings.temporal_tls is False and tls_settings:
        raise ValueError(
            f"TEMPORAL_TLS=false, but {' and '.join(tls_settings)} "
            f"{'is' if len(tls_settings) == 1 else 'are'} set: remove TEMPORAL_TLS=false to "
            "connect with TLS, or the TLS settings to connect in the clear"
        )
    if bool(cert_file) != bool(key_file):
        present, missing = (
            ("TEMPORAL_TLS_CERT_FILE", "TEMPORAL_TLS_KEY_FILE")
            if cert_file
            else ("TEMPORAL_TLS_KEY_FILE", "TEMPORAL_TLS_CERT_FILE")
        )
        raise ValueError(
            f"{present} is set but {missing} is not: mTLS needs the client certificate and its "
            "private key, or neither"
        )
    api_key_file = settings.temporal_api_key_file
    api_key = _read_api_key(api_key_file) if api_key_file else None
    # An API key implies TLS, as Temporal Cloud requires (and as the SDK does), unless told not to.
    use_tls = settings.temporal_tls
    if use_tls is None:
        use_tls = bool(tls_settings or api_key)
    if not use_tls:
        return Credentials(tls=None, api_key=api_key, api_key_file=api_key_file)
    ca_pem = _read_certificates("TEMPORAL_TLS_CA_FILE", ca_file)[0] if ca_file else None
    cert_pem = key_pem = certificate = None
    if cert_file and key_file:
        cert_pem, chain = _read_certificates("TEMPORAL_TLS_CERT_FILE", cert_file)
        certificate = chain[0]
        _check_validity(certificate, cert_file)
        key_pem = _read_private_key(key_file, certificate, cert_file)
    return Credentials(
        tls=TLSConfig(
            server_root_ca_cert=ca_pem,
            domain=server_name or None,
            client_cert=cert_pem,
            client_private_key=key_pem,
        ),
        api_key=api_key,
        certificate=certificate,
        ca_file=ca_file,
        cert_file=cert_file,
        api_key_file=api_key_file,
        server_name=server_name,
    )


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{setting}: {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{setting}: {path} is a directory, not a file") from None
    except OSError as err:
        raise ValueError(f"{setting}: {path} cannot be read ({err.strerror})") from None


def _read_certificates(setting: str, path: Path) -> tuple[bytes, list[x509.Certificate]]:
    """The file's bytes and the PEM certificates in it (at least one)."""
    data = _read(setting, path)
    try:
        return data, x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(
            f"{setting}: {path} is not a PEM certificate (-----BEGIN CERTIFICATE-----)"
        ) from None


def _check_validity(certificate: x509.Certificate, path: Path) -> None:
    now = datetime.now(UTC)
    if now > certificate.not_valid_after_utc:
        raise ValueError(
            f"TEMPORAL_TLS_CERT_FILE: {path} ({certificate.subject.rfc4514_string()}) expired "
            f"on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: the server would refuse it"
        )
    if now < certificate.not_valid_before_utc:
        raise ValueError(
            f"TEMPORAL_TLS_CERT_FILE: {path} ({certificate.subject.rfc4514_string()}) is not "
            f"valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )


def _read_private_key(path: Path, certificate: x509.Certificate, cert_path: Path) -> bytes:
    """The key file's bytes, once it is known to be the certificate's key."""
    data = _read("TEMPORAL_TLS_KEY_FILE", path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise ValueError(
            f"TEMPORAL_TLS_KEY_FILE: {path} is encrypted: the SDK takes no passphrase; give it "
            "unencrypted (e.g. `openssl pkey -in KEY -out KEY.plain`) in a file only this "
            "process reads"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(
            f"TEMPORAL_TLS_KEY_FILE: {path} is not a PEM private key (-----BEGIN PRIVATE KEY-----)"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise ValueError(
            f"TEMPORAL_TLS_KEY_FILE: {path} is not the private key of the certificate in "
            f"TEMPORAL_TLS_CERT_FILE ({cert_path}, {certificate.subject.rfc4514_string()})"
        )
    return data


def _read_api_key(path: Path) -> str:
    try:
        key = _read("TEMPORAL_API_KEY_FILE", path).decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"TEMPORAL_API_KEY_FILE: {path} is not text") from None
    if not key:
        raise ValueError(f"TEMPORAL_API_KEY_FILE: {path} is empty")
    if not key.isprintable() or any(char.isspace() for char in key):
        raise ValueError(
            f"TEMPORAL_API_KEY_FILE: {path} holds more than a key (spaces, or several lines): "
            "it must hold the key alone"
        )
    return key
