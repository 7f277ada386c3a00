"""``Security``: the shared secret and TLS material of a cluster, in one frozen object.

Every party of a cluster - scheduler, workers, clients - is given the same
``Security`` (or loads it from the same command-line options, environment
variables or TOML file).  It carries:

* ``secret``: the shared token every connecting side sends in its ``Hello``;
  the scheduler and the workers' peer listeners refuse a ``Hello`` without it.
* TLS: ``tls_ca_file`` (the authority that signed the cluster's certificates),
  ``tls_cert``/``tls_key`` (this party's certificate and key; a server needs
  them to listen with TLS, a client presents them for mutual TLS),
  ``tls_require_client_cert`` (servers demand a certificate signed by the CA:
  mutual TLS), ``tls_check_hostname`` (off for clusters addressed by IPs their
  certificates do not name) and ``require_encryption`` (never speak plain TCP).

Where a setting comes from, by precedence: the command line, then the
environment (:data:`ENV_VARS`), then the file named by ``--security-file`` or
``DSCHED_SECURITY_FILE``.  A secret is read from a file (``--secret-file``,
``DSCHED_SECRET_FILE``, ``secret_file`` in the TOML file) or from
``DSCHED_SECRET``, never from a command-line argument, which ``ps`` shows to
everyone on the machine.

The secret never appears in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import secrets
import ssl
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from dsched._protocol import MAX_AUTH_LENGTH

__all__ = [
    "ENV_VARS",
    "Security",
    "SecurityError",
    "check_listen_allowed",
    "forget_cluster",
    "is_loopback",
    "remember_cluster",
    "security_for",
]

logger = logging.getLogger("dsched.security")

ENV_SECRET: Final = "DSCHED_SECRET"
ENV_SECRET_FILE: Final = "DSCHED_SECRET_FILE"
ENV_SECURITY_FILE: Final = "DSCHED_SECURITY_FILE"
ENV_TLS_CA_FILE: Final = "DSCHED_TLS_CA_FILE"
ENV_TLS_CERT: Final = "DSCHED_TLS_CERT"
ENV_TLS_KEY: Final = "DSCHED_TLS_KEY"
ENV_TLS_REQUIRE_CLIENT_CERT: Final = "DSCHED_TLS_REQUIRE_CLIENT_CERT"
ENV_TLS_CHECK_HOSTNAME: Final = "DSCHED_TLS_CHECK_HOSTNAME"
ENV_REQUIRE_ENCRYPTION: Final = "DSCHED_REQUIRE_ENCRYPTION"

# Every environment variable that configures security (a child process is given
# exactly the ones of its cluster's Security and none inherited from elsewhere).
ENV_VARS: Final = (
    ENV_SECRET,
    ENV_SECRET_FILE,
    ENV_SECURITY_FILE,
    ENV_TLS_CA_FILE,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_REQUIRE_CLIENT_CERT,
    ENV_TLS_CHECK_HOSTNAME,
    ENV_REQUIRE_ENCRYPTION,
)

_PATH_FIELDS: Final = ("tls_ca_file", "tls_cert", "tls_key")
_FLAG_FIELDS: Final = ("tls_require_client_cert", "tls_check_hostname", "require_encryption")
_FILE_KEYS: Final = frozenset({"secret", "secret_file", *_PATH_FIELDS, *_FLAG_FIELDS})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})
_SECRET_BYTES: Final = 32


class SecurityError(ValueError):
    """A security setting is missing, malformed or contradicts another (the message says which)."""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if not host:
        return False  # "" or None binds every interface
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a public interface


@dataclasses.dataclass(frozen=True, repr=False)
class Security:
    """How a cluster authenticates its parties and encrypts their connections.

    ``Security()`` is no security (fine on loopback); ``Security.temporary()``
    a fresh random secret; ``Security.load()`` what the environment and the
    security file say.  The same object configures a ``SchedulerServer``, a
    ``Worker``, a ``Client`` and a ``LocalCluster`` (``security=``).
    """

    secret: str = ""
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_require_client_cert: bool = False
    tls_check_hostname: bool = True
    require_encryption: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str):
            raise SecurityError(f"the secret must be a string, not {type(self.secret).__name__}")
        if len(self.secret) > MAX_AUTH_LENGTH:  # a Hello carrying more is refused as malformed
            raise SecurityError(f"the secret is {len(self.secret)} characters long; at most {MAX_AUTH_LENGTH} are sent")
        if self.tls_key is not None and self.tls_cert is None:
            raise SecurityError("a TLS key (tls_key) needs its certificate (tls_cert)")
        if self.tls_require_client_cert and (self.tls_ca_file is None or self.tls_cert is None):
            raise SecurityError(
                "mutual TLS (tls_require_client_cert) needs the CA that signs the client certificates "
                "(tls_ca_file) and this side's own certificate (tls_cert, tls_key)"
            )

    def __repr__(self) -> str:
        parts = [f"secret={'***' if self.secret else None}"]
        for name in (*_PATH_FIELDS, *_FLAG_FIELDS):
            value = getattr(self, name)
            if value != getattr(_DEFAULTS, name):
                parts.append(f"{name}={value!r}")
        return f"Security({', '.join(parts)})"

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def temporary(cls, **settings: object) -> Security:
        """A fresh random secret (``secrets.token_urlsafe``), for one local cluster."""
        return cls(secret=secrets.token_urlsafe(_SECRET_BYTES), **settings)  # type: ignore[arg-type]

    def with_secret(self, secret: str) -> Security:
        """The same settings with another secret."""
        return dataclasses.replace(self, secret=secret)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Security:
        """The settings of one TOML security file (see :meth:`load` for its keys)."""
        return cls(**_file_layer(Path(path)))  # type: ignore[arg-type]

    @classmethod
    def load(
        cls,
        *,
        security_file: str | os.PathLike[str] | None = None,
        secret_file: str | os.PathLike[str] | None = None,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_require_client_cert: bool | None = None,
        tls_check_hostname: bool | None = None,
        require_encryption: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Security:
        """Settings from the arguments (the command line), then ``env``, then the security file.

        An argument left None falls back to its environment variable, which
        falls back to the security file (``security_file``, else
        ``$DSCHED_SECURITY_FILE``), which falls back to the default.  ``env``
        defaults to ``os.environ``.  Raises :class:`SecurityError`.

        The security file is TOML with these optional top-level keys::

            secret_file = "/etc/dsched/secret"   # or: secret = "..."
            tls_ca_file = "/etc/dsched/ca.pem"
            tls_cert = "/etc/dsched/node.pem"
            tls_key = "/etc/dsched/node.key"
            tls_require_client_cert = true
            tls_check_hostname = true
            require_encryption = true

        Relative paths in it are relative to the file's directory.
        """
        env = os.environ if env is None else env
        file_path = security_file if security_file is not None else env.get(ENV_SECURITY_FILE) or None
        merged: dict[str, object] = _file_layer(Path(file_path)) if file_path is not None else {}
        merged.update(_env_layer(env))
        given = {
            "tls_ca_file": tls_ca_file, "tls_cert": tls_cert, "tls_key": tls_key,
            "tls_require_client_cert": tls_require_client_cert, "tls_check_hostname": tls_check_hostname,
            "require_encryption": require_encryption,
        }
        merged.update({k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in given.items() if v is not None})
        if secret_file is not None:
            merged["secret"] = read_secret_file(Path(secret_file), "--secret-file")
        return cls(**merged)  # type: ignore[arg-type]

    # -- what it says -------------------------------------------------------------------

    @property
    def serves_tls(self) -> bool:
        """Whether servers configured with this listen with TLS (they have a certificate)."""
        return self.tls_cert is not None

    @property
    def authenticates(self) -> bool:
        """Whether a server configured with this refuses strangers (a secret, or mutual TLS)."""
        return bool(self.secret) or self.tls_require_client_cert

    def environment(self) -> dict[str, str]:
        """The environment variables that make a child process load exactly this ``Security``.

        Every variable of :data:`ENV_VARS` is present, "" where unset, so that
        nothing inherited from the parent's environment mixes in.
        """
        env = dict.fromkeys(ENV_VARS, "")
        env[ENV_SECRET] = self.secret
        for name, var in zip(_PATH_FIELDS, (ENV_TLS_CA_FILE, ENV_TLS_CERT, ENV_TLS_KEY)):
            value = getattr(self, name)
            env[var] = os.path.abspath(value) if value else ""
        env[ENV_TLS_REQUIRE_CLIENT_CERT] = "1" if self.tls_require_client_cert else "0"
        env[ENV_TLS_CHECK_HOSTNAME] = "1" if self.tls_check_hostname else "0"
        env[ENV_REQUIRE_ENCRYPTION] = "1" if self.require_encryption else "0"
        return env

    # -- TLS contexts -------------------------------------------------------------------

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """The context servers listen with (None: plain TCP).  Built once, then shared."""
        if not self.serves_tls:
            if self.require_encryption:
                raise SecurityError(
                    "require_encryption is set but there is no certificate to serve TLS with: "
                    "give --tls-cert and --tls-key (or DSCHED_TLS_CERT, DSCHED_TLS_KEY)"
                )
            return None
        return self._server_context

    def client_ssl_context(self) -> ssl.SSLContext:
        """The context for connecting to a ``tls://`` address.  Built once, then shared."""
        return self._client_context

    def check_scheme(self, address: str, scheme: str) -> None:
        """Refuse a plain ``tcp://`` address when encryption is required."""
        if scheme != "tls" and self.require_encryption:
            raise SecurityError(
                f"refusing to connect to {address} without TLS: encryption is required here "
                "(use its tls:// address, or drop require_encryption)"
            )

    @functools.cached_property
    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.tls_cert, self.tls_key)
        if self.tls_require_client_cert:
            _load_ca(context, self.tls_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @functools.cached_property
    def _client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_ca_file is not None:
            _load_ca(context, self.tls_ca_file)
        context.check_hostname = self.tls_check_hostname
        if self.tls_cert is not None:  # presented when the server asks (mutual TLS)
            _load_chain(context, self.tls_cert, self.tls_key)
        return context


_DEFAULTS: Final = Security()


def check_listen_allowed(host: str | None, security: Security, *, insecure: bool, what: str, option: str) -> None:
    """Refuse to serve beyond loopback without authentication, unless told ``insecure``.

    Whoever completes the handshake with a scheduler runs code on every worker
    (and a worker's peers can place data on it), so an open port on a network
    is an open door.  ``what`` names the server; ``option`` is how its user
    would say "listen here" (``--host``) in the message.
    """
    if insecure or security.authenticates or is_loopback(host):
        return
    where = host or "every interface"
    raise SecurityError(
        f"refusing to start the {what} on {where} ({option}) without a shared secret: anyone who can reach "
        "it could run code on every worker.  Give the cluster a secret (--secret-file FILE, or the "
        f"{ENV_SECRET} / {ENV_SECRET_FILE} environment variables, or Security(secret=...)), or listen on "
        "127.0.0.1, or, on a network where everyone is trusted, pass --insecure (insecure=True)"
    )


# -- the clusters this process started ------------------------------------------------

# A LocalCluster's generated secret, by its scheduler's (host, port): so that
# ``Client(cluster.scheduler_address)`` in the same process works as in Dask,
# without the user ever handling the secret.
_local_clusters: dict[tuple[str, int], Security] = {}


def _address_key(address: str) -> tuple[str, int] | None:
    from dsched._comm import parse_address  # the comm layer imports anyio: only when needed

    try:
        _, host, port = parse_address(address)
    except ValueError:
        return None
    return host, port


def remember_cluster(address: str, security: Security) -> None:
    """Record the security of a cluster this process started (see :func:`security_for`)."""
    key = _address_key(address)
    if key is not None:
        _local_clusters[key] = security


def forget_cluster(address: str, security: Security) -> None:
    """Drop what :func:`remember_cluster` recorded (unless another cluster took the address since)."""
    key = _address_key(address)
    if key is not None and _local_clusters.get(key) is security:
        del _local_clusters[key]


def security_for(address: str) -> Security:
    """The security to reach ``address`` with when none was given.

    A ``LocalCluster`` started by this process is reached with its own
    (generated) secret; any other address with what the environment and the
    security file say (:meth:`Security.load`).
    """
    key = _address_key(address)
    known = _local_clusters.get(key) if key is not None else None
    return known if known is not None else Security.load()


# -- loading --------------------------------------------------------------------------


def read_secret_file(path: Path, source: str) -> str:
    """The secret in ``path`` (surrounding whitespace removed); warns if others may read it."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecurityError(f"cannot read the secret file {path} ({source}): {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecurityError(f"the secret file {path} ({source}) is not UTF-8 text") from None
    if not text:
        raise SecurityError(f"the secret file {path} ({source}) is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the secret file %s can be read by other users: chmod 600 it", path)
    return text


def _flag(text: str, source: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SecurityError(f"{source} must be true or false (1/0, yes/no), not {text!r}")


def _env_layer(env: Mapping[str, str]) -> dict[str, object]:
    layer: dict[str, object] = {}
    secret, secret_file = env.get(ENV_SECRET, ""), env.get(ENV_SECRET_FILE, "")
    if secret and secret_file:
        raise SecurityError(f"both {ENV_SECRET} and {ENV_SECRET_FILE} are set: set one of them")
    if secret:
        layer["secret"] = secret
    elif secret_file:
        layer["secret"] = read_secret_file(Path(secret_file), ENV_SECRET_FILE)
    for name, var in zip(_PATH_FIELDS, (ENV_TLS_CA_FILE, ENV_TLS_CERT, ENV_TLS_KEY)):
        if env.get(var):
            layer[name] = env[var]
    for name, var in zip(_FLAG_FIELDS, (ENV_TLS_REQUIRE_CLIENT_CERT, ENV_TLS_CHECK_HOSTNAME, ENV_REQUIRE_ENCRYPTION)):
        if env.get(var):
            layer[name] = _flag(env[var], var)
    return layer


def _file_layer(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SecurityError(f"cannot read the security file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SecurityError(f"the security file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise SecurityError(f"the security file {path} has unknown keys {unknown}; known: {sorted(_FILE_KEYS)}")
    if "secret" in data and "secret_file" in data:
        raise SecurityError(f"the security file {path} sets both secret and secret_file: keep one")
    base = path.parent
    layer: dict[str, object] = {}
    for key, value in data.items():
        if key in _FLAG_FIELDS:
            if not isinstance(value, bool):
                raise SecurityError(f"{key} in the security file {path} must be true or false")
            layer[key] = value
            continue
        if not isinstance(value, str) or not value:
            raise SecurityError(f"{key} in the security file {path} must be a non-empty string")
        if key == "secret":
            layer["secret"] = value
        elif key == "secret_file":
            layer["secret"] = read_secret_file(base / value, f"secret_file in {path}")
        else:
            layer[key] = str(base / value)
    return layer


def _load_chain(context: ssl.SSLContext, cert: str | None, key: str | None) -> None:
    assert cert is not None
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityError(f"cannot load the TLS certificate {cert} (key {key or 'in the same file'}): {exc}") from None


def _load_ca(context: ssl.SSLContext, ca_file: str | None) -> None:
    assert ca_file is not None
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityError(f"cannot load the TLS certificate authority {ca_file}: {exc}") from None
