"""The security options shared by ``dsched scheduler``, ``dsched worker`` and ``dsched local``.

Each command declares the same parameters with the aliases below and turns
them into a :class:`~dsched._security.Security` with :func:`security_from_options`
(the command line wins over the environment, which wins over the security file).
There is deliberately no option taking the secret itself: a command line is
visible to every user of the machine (``ps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsched._security import Security, SecurityError

__all__ = [
    "InsecureOption",
    "RequireEncryptionOption",
    "SecretFileOption",
    "SecurityFileOption",
    "TlsCaFileOption",
    "TlsCertOption",
    "TlsCheckHostnameOption",
    "TlsKeyOption",
    "TlsRequireClientCertOption",
    "security_from_options",
]

_PANEL = "Security"

SecretFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Read the cluster's shared secret from this file (env DSCHED_SECRET_FILE, or DSCHED_SECRET "
        "for the secret itself).",
        dir_okay=False, rich_help_panel=_PANEL,
    ),
]
TlsCaFileOption = Annotated[
    Path | None,
    typer.Option(
        help="CA certificate(s) that signed the cluster's certificates (env DSCHED_TLS_CA_FILE).",
        dir_okay=False, rich_help_panel=_PANEL,
    ),
]
TlsCertOption = Annotated[
    Path | None,
    typer.Option(
        help="This node's certificate (PEM); servers listen with TLS when given (env DSCHED_TLS_CERT).",
        dir_okay=False, rich_help_panel=_PANEL,
    ),
]
TlsKeyOption = Annotated[
    Path | None,
    typer.Option(
        help="The private key of --tls-cert, if not in the same file (env DSCHED_TLS_KEY).",
        dir_okay=False, rich_help_panel=_PANEL,
    ),
]
TlsRequireClientCertOption = Annotated[
    bool | None,
    typer.Option(
        "--tls-require-client-cert/--no-tls-require-client-cert",
        help="Mutual TLS: refuse connections without a certificate signed by --tls-ca-file "
        "(env DSCHED_TLS_REQUIRE_CLIENT_CERT).",
        show_default=False, rich_help_panel=_PANEL,
    ),
]
TlsCheckHostnameOption = Annotated[
    bool | None,
    typer.Option(
        "--tls-check-hostname/--no-tls-check-hostname",
        help="Check that a server's certificate names the host connected to (default: on; off for clusters "
        "addressed by IPs their certificates do not name; env DSCHED_TLS_CHECK_HOSTNAME).",
        show_default=False, rich_help_panel=_PANEL,
    ),
]
RequireEncryptionOption = Annotated[
    bool | None,
    typer.Option(
        "--require-encryption/--no-require-encryption",
        help="Never listen or connect without TLS (env DSCHED_REQUIRE_ENCRYPTION).",
        show_default=False, rich_help_panel=_PANEL,
    ),
]
SecurityFileOption = Annotated[
    Path | None,
    typer.Option(
        help="TOML file with the security settings (docs/security.md; env DSCHED_SECURITY_FILE); "
        "options and environment variables override it.",
        dir_okay=False, rich_help_panel=_PANEL,
    ),
]
InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Allow listening beyond loopback without a secret: anyone who can reach the port can run code "
        "on the workers.  Only on a network where everyone is trusted.",
        rich_help_panel=_PANEL,
    ),
]


def security_from_options(
    *,
    secret_file: Path | None,
    tls_ca_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_require_client_cert: bool | None,
    tls_check_hostname: bool | None,
    require_encryption: bool | None,
    security_file: Path | None,
) -> Security:
    """The ``Security`` the options, the environment and the security file describe.

    Raises ``typer.BadParameter`` with the reason when they are wrong.
    """
    try:
        return Security.load(
            security_file=security_file, secret_file=secret_file, tls_ca_file=tls_ca_file, tls_cert=tls_cert,
            tls_key=tls_key, tls_require_client_cert=tls_require_client_cert,
            tls_check_hostname=tls_check_hostname, require_encryption=require_encryption,
        )
    except SecurityError as exc:
        raise typer.BadParameter(str(exc)) from None
