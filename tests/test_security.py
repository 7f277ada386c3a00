"""Security: the shared secret, TLS and mutual TLS, the loopback rule, LocalCluster's generated secret.

Certificates come from ``trustme`` (a throwaway CA), issued for 127.0.0.1 and
localhost so that hostname checking stays on.
"""

from __future__ import annotations

import logging
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme

from dsched import Security
from dsched._client import Client
from dsched._cluster import LocalCluster
from dsched._comm import ConnectError, connect, parse_address
from dsched._handshake import HandshakeRefused
from dsched._peer_pool import PeerPool
from dsched._scheduler_server import SchedulerServer
from dsched._security import SecurityError, check_listen_allowed, is_loopback, security_for
from dsched._worker import Worker

pytestmark = pytest.mark.anyio

SECRET = "correct-horse-battery-staple-7f3a9c"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


class Certs:
    """A CA and a certificate for 127.0.0.1/localhost, written as PEM files."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca = str(directory / "ca.pem")
        self.cert = str(directory / "node.pem")
        self.key = str(directory / "node.key")
        ca.cert_pem.write_to_path(self.ca)
        cert.cert_chain_pems[0].write_to_path(self.cert)
        cert.private_key_pem.write_to_path(self.key)
        # A second, unrelated CA: its certificates must not be trusted.
        stranger = trustme.CA().issue_cert("127.0.0.1")
        self.stranger_cert = str(directory / "stranger.pem")
        stranger.private_key_and_cert_chain_pem.write_to_path(self.stranger_cert)

    def security(self, *, secret: str = SECRET, mutual: bool = False) -> Security:
        return Security(
            secret=secret, tls_ca_file=self.ca, tls_cert=self.cert, tls_key=self.key, tls_require_client_cert=mutual
        )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


# -- the object itself ----------------------------------------------------------------


def test_repr_and_errors_never_show_the_secret(certs: Certs) -> None:
    security = certs.security()
    assert SECRET not in repr(security) and "secret=***" in repr(security)
    assert SECRET not in str(security)
    assert repr(Security()) == "Security(secret=None)"
    with pytest.raises(SecurityError) as info:
        check_listen_allowed("0.0.0.0", Security(), insecure=False, what="scheduler", option="--host")
    assert "--insecure" in str(info.value) and "DSCHED_SECRET" in str(info.value)


def test_temporary_secrets_are_random_and_long() -> None:
    first, second = Security.temporary(), Security.temporary()
    assert first.secret != second.secret
    assert len(first.secret) >= 40
    assert Security.temporary(tls_check_hostname=False).tls_check_hostname is False


def test_inconsistent_settings_are_refused(certs: Certs) -> None:
    with pytest.raises(SecurityError, match="tls_ca_file"):
        Security(tls_cert=certs.cert, tls_key=certs.key, tls_require_client_cert=True)
    with pytest.raises(SecurityError, match="needs its certificate"):
        Security(tls_key=certs.key)
    with pytest.raises(SecurityError, match="at most 4096") as info:
        Security(secret="s" * 5000)
    assert "sss" not in str(info.value)
    with pytest.raises(SecurityError, match="no certificate to serve TLS"):
        Security(require_encryption=True).server_ssl_context()
    with pytest.raises(SecurityError, match="cannot load the TLS certificate"):
        Security(tls_cert=certs.ca + ".missing").server_ssl_context()


def test_tls_contexts(certs: Certs) -> None:
    server = certs.security(mutual=True).server_ssl_context()
    assert server is not None
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    client = certs.security().client_ssl_context()
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
    relaxed = Security(tls_ca_file=certs.ca, tls_check_hostname=False).client_ssl_context()
    assert not relaxed.check_hostname and relaxed.verify_mode == ssl.CERT_REQUIRED
    assert Security(secret="x").server_ssl_context() is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("", False), (None, False),
        ("10.1.2.3", False), ("example.org", False),
    ],
)
def test_loopback_addresses(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_mutual_tls_counts_as_authentication(certs: Certs) -> None:
    check_listen_allowed("0.0.0.0", certs.security(secret="", mutual=True), insecure=False, what="s", option="-")
    check_listen_allowed("0.0.0.0", Security(secret="x"), insecure=False, what="s", option="-")
    check_listen_allowed("0.0.0.0", Security(), insecure=True, what="s", option="-")
    with pytest.raises(SecurityError):  # TLS alone encrypts but lets anyone in
        check_listen_allowed("0.0.0.0", certs.security(secret=""), insecure=False, what="s", option="-")


# -- where settings come from ----------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_precedence_cli_over_env_over_file(tmp_path: Path, certs: Certs) -> None:
    _write(tmp_path / "file-secret", "from-file\n")
    _write(tmp_path / "cli-secret", "  from-cli  \n")
    security_file = _write(
        tmp_path / "security.toml",
        f'secret_file = "file-secret"\ntls_ca_file = "{certs.ca}"\ntls_cert = "{certs.cert}"\n'
        f'tls_key = "{certs.key}"\ntls_check_hostname = false\nrequire_encryption = true\n',
    )
    env = {"DSCHED_SECURITY_FILE": str(security_file)}
    from_file = Security.load(env=env)
    assert from_file.secret == "from-file"  # relative to the file's directory, whitespace stripped
    assert from_file.tls_cert == certs.cert and from_file.require_encryption and not from_file.tls_check_hostname
    env |= {"DSCHED_SECRET": "from-env", "DSCHED_TLS_CHECK_HOSTNAME": "yes", "DSCHED_REQUIRE_ENCRYPTION": "0"}
    from_env = Security.load(env=env)
    assert from_env.secret == "from-env" and from_env.tls_check_hostname and not from_env.require_encryption
    assert from_env.tls_ca_file == certs.ca  # not overridden: still the file's
    from_cli = Security.load(secret_file=tmp_path / "cli-secret", tls_check_hostname=False, env=env)
    assert from_cli.secret == "from-cli" and not from_cli.tls_check_hostname
    # --security-file on the command line replaces DSCHED_SECURITY_FILE.
    other = _write(tmp_path / "other.toml", 'secret = "other-file"\n')
    assert Security.load(security_file=other, env={"DSCHED_SECURITY_FILE": str(security_file)}).secret == "other-file"
    assert Security.load(env={}) == Security()


def test_secret_from_a_file_named_in_the_environment(tmp_path: Path) -> None:
    secret_file = _write(tmp_path / "secret", SECRET + "\n")
    assert Security.load(env={"DSCHED_SECRET_FILE": str(secret_file)}).secret == SECRET
    with pytest.raises(SecurityError, match="set one of them"):
        Security.load(env={"DSCHED_SECRET_FILE": str(secret_file), "DSCHED_SECRET": "x"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('secret = "a"\nsecret_file = "b"\n', "both secret and secret_file"),
        ('tls_certificate = "x"\n', "unknown keys \\['tls_certificate'\\]"),
        ("require_encryption = 1\n", "must be true or false"),
        ('secret = ""\n', "non-empty string"),
        ("secret = [", "not valid TOML"),
        ('secret_file = "nowhere"\n', "cannot read the secret file"),
    ],
)
def test_bad_security_files_are_explained(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "security.toml", content)
    with pytest.raises(SecurityError, match=message) as info:
        Security.from_file(path)
    assert str(path) in str(info.value)


def test_bad_environment_values_are_explained(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="DSCHED_TLS_REQUIRE_CLIENT_CERT must be true or false"):
        Security.load(env={"DSCHED_TLS_REQUIRE_CLIENT_CERT": "maybe"})
    with pytest.raises(SecurityError, match="is empty"):
        Security.load(env={"DSCHED_SECRET_FILE": str(_write(tmp_path / "empty", "\n"))})
    with pytest.raises(SecurityError, match="cannot read the security file"):
        Security.load(env={"DSCHED_SECURITY_FILE": str(tmp_path / "absent.toml")})


def test_a_secret_file_others_can_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="dsched.security"):
        assert Security.load(secret_file=path, env={}).secret == SECRET
    assert "can be read by other users" in caplog.text and SECRET not in caplog.text


def test_environment_round_trip(certs: Certs) -> None:
    security = Security(
        secret=SECRET, tls_ca_file=certs.ca, tls_cert=certs.cert, tls_key=certs.key,
        tls_require_client_cert=True, tls_check_hostname=False, require_encryption=True,
    )
    assert Security.load(env=security.environment()) == security
    # Whatever the parent's environment says is replaced, not mixed in.
    inherited = {"DSCHED_SECRET_FILE": "/elsewhere", "DSCHED_SECURITY_FILE": "/elsewhere.toml"}
    assert Security.load(env={**inherited, **Security().environment()}) == Security()


# -- the loopback rule -----------------------------------------------------------------


async def test_servers_refuse_every_interface_without_a_secret() -> None:
    with pytest.raises(SecurityError, match="refusing to start the scheduler on 0.0.0.0"):
        SchedulerServer("0.0.0.0", security=Security())
    with pytest.raises(SecurityError, match="worker's peer listener"):
        Worker("tcp://127.0.0.1:1", host="0.0.0.0", security=Security())
    async with SchedulerServer("0.0.0.0", security=Security(secret=SECRET), dashboard_address=None) as server:
        _, _, port = parse_address(server.address)
        address = f"tcp://127.0.0.1:{port}"
        async with Worker(address, security=Security(secret=SECRET)), Client(
            address, security=Security(secret=SECRET), asynchronous=True
        ) as client:
            with anyio.fail_after(30):
                assert await client.submit(inc, 1) == 2
    async with SchedulerServer("0.0.0.0", security=Security(), insecure=True, dashboard_address=None):
        pass


# -- the shared secret -------------------------------------------------------------------


async def test_wrong_or_missing_secret_is_refused_and_others_keep_being_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = Security(secret=SECRET)
    caplog.set_level(logging.DEBUG, logger="dsched")
    async with SchedulerServer(security=good, dashboard_address=None) as server:
        async with Worker(server.address, security=good) as worker, Client(
            server.address, security=good, asynchronous=True
        ) as client:
            first = client.submit(inc, 1)
            assert await first == 2
            # Clients.
            with pytest.raises(HandshakeRefused, match="authentication failed.*this side has none"):
                await Client(server.address, security=Security(), asynchronous=True, timeout=5)
            with pytest.raises(HandshakeRefused, match="authentication failed.*does not share"):
                await Client(server.address, security=Security(secret="guess"), asynchronous=True, timeout=5)
            # Workers.
            with pytest.raises(HandshakeRefused, match="authentication failed"):
                async with Worker(server.address, security=Security(secret="guess"), connect_timeout=5):
                    pass
            # Peers: a worker's data is not handed out (or overwritten) without the secret.
            for stranger in (PeerPool(name="stranger", security=Security(secret="guess"), timeout=5),
                             PeerPool(name="stranger", timeout=5)):
                with pytest.raises(HandshakeRefused, match="the worker at .* refused the connection: authentication"):
                    await stranger.get_data(worker.address, [first.key])
                with pytest.raises(HandshakeRefused):
                    await stranger.put_data(worker.address, {"planted": b"x"})
                await stranger.aclose()
            assert "planted" not in worker.data
            friend = PeerPool(name="friend", security=good, timeout=5)
            reply = await friend.get_data(worker.address, [first.key])
            assert reply is not None and list(reply.data) == [first.key]
            await friend.aclose()
            # The connected client and worker were not disturbed.
            assert await client.submit(add, first, 40) == 42
            assert len(server.workers) == 1
    assert "authentication failed" in caplog.text  # the refusals were logged...
    assert SECRET not in caplog.text  # ...and the secret never was


# -- TLS ---------------------------------------------------------------------------------


async def test_mutual_tls_in_process_with_dependencies_across_workers(certs: Certs) -> None:
    security = certs.security(mutual=True)
    async with SchedulerServer(security=security, dashboard_address=None) as server:
        assert server.address.startswith("tls://")
        async with Worker(server.address, security=security) as w1, Worker(server.address, security=security) as w2:
            assert w1.address.startswith("tls://") and w2.address.startswith("tls://")
            async with Client(server.address, security=security, asynchronous=True) as client:
                a = client.submit(inc, 1, workers=[w1.address])
                b = client.submit(inc, 10, workers=[w2.address])
                total = client.submit(add, a, b, workers=[w1.address])  # fetches b from w2 over TLS
                assert await total == 13
                assert await client.gather([a, b]) == [2, 11]
                # A client without a certificate completes no handshake...
                no_cert = Security(secret=SECRET, tls_ca_file=certs.ca)
                with anyio.fail_after(20):
                    with pytest.raises(ConnectError, match="client certificate"):
                        await Client(server.address, security=no_cert, asynchronous=True, timeout=5)
                # ...nor does one whose certificate another CA signed.
                stranger = Security(secret=SECRET, tls_ca_file=certs.ca, tls_cert=certs.stranger_cert)
                with anyio.fail_after(20), pytest.raises(ConnectError):
                    await Client(server.address, security=stranger, asynchronous=True, timeout=5)
                # A peer without a certificate cannot reach a worker's data either.
                peers = PeerPool(name="no-cert", security=no_cert, timeout=5)
                with anyio.fail_after(20), pytest.raises(ConnectError):
                    await peers.get_data(w1.address, [a.key])
                await peers.aclose()
                assert await client.submit(add, total, 1) == 14


async def test_plain_tcp_against_tls_fails_cleanly(certs: Certs) -> None:
    security = certs.security()
    async with SchedulerServer(security=security, dashboard_address=None) as server:
        async with Worker(server.address, security=security), Client(
            server.address, security=security, asynchronous=True
        ) as client:
            plain = server.address.replace("tls://", "tcp://")
            with anyio.fail_after(20):
                with pytest.raises(ConnectError, match="if it listens with TLS"):
                    await Client(plain, security=Security(secret=SECRET), asynchronous=True, timeout=5)
            # A TLS client that does not trust the scheduler's certificate is refused too.
            with anyio.fail_after(20), pytest.raises(ConnectError, match="certificate verify failed"):
                await Client(server.address, security=Security(secret=SECRET), asynchronous=True, timeout=5)
            assert await client.submit(inc, 41) == 42


async def test_tls_client_against_a_plain_scheduler_fails_cleanly(certs: Certs) -> None:
    async with SchedulerServer(security=Security(secret=SECRET), dashboard_address=None) as server:
        _, host, port = parse_address(server.address)
        with anyio.fail_after(20), pytest.raises(ConnectError):
            await connect(host, port, timeout=5, ssl_context=certs.security().client_ssl_context())
        async with Worker(server.address, security=Security(secret=SECRET)), Client(
            server.address, security=Security(secret=SECRET), asynchronous=True
        ) as client:
            assert await client.submit(inc, 1) == 2


async def test_hostname_checking_and_its_opt_out(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    # A certificate that names another host than the one the cluster is reached at.
    ca.issue_cert("scheduler.internal").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    strict = Security(secret=SECRET, tls_ca_file=str(tmp_path / "ca.pem"), tls_cert=str(tmp_path / "node.pem"))
    relaxed = Security(
        secret=SECRET, tls_ca_file=str(tmp_path / "ca.pem"), tls_cert=str(tmp_path / "node.pem"),
        tls_check_hostname=False,
    )
    async with SchedulerServer(security=strict, dashboard_address=None) as server:
        with anyio.fail_after(20), pytest.raises(ConnectError, match="IP address mismatch|hostname"):
            await Client(server.address, security=strict, asynchronous=True, timeout=5)
        async with Worker(server.address, security=relaxed), Client(
            server.address, security=relaxed, asynchronous=True
        ) as client:
            assert await client.submit(inc, 1) == 2


async def test_required_encryption_refuses_plain_addresses(certs: Certs) -> None:
    security = Security(secret=SECRET, tls_ca_file=certs.ca, require_encryption=True)
    with pytest.raises(SecurityError, match="without TLS"):
        await Client("tcp://127.0.0.1:8786", security=security, asynchronous=True, timeout=5)
    with pytest.raises(SecurityError, match="no certificate to serve TLS"):
        SchedulerServer(security=security)


# -- the dashboard ---------------------------------------------------------------------------


def _get(url: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.headers.get("set-cookie") or ""
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def test_exposed_dashboard_needs_the_secret_over_https(certs: Certs) -> None:
    security = certs.security()
    async with SchedulerServer(security=security, dashboard_address="0.0.0.0:0") as server:
        link = server.dashboard_link
        assert link is not None and link.startswith("https://")
        base = f"https://localhost:{link.rsplit(':', 1)[1].split('/')[0]}"
        context = ssl.create_default_context(cafile=certs.ca)
        status, _ = await anyio.to_thread.run_sync(lambda: _get(f"{base}/status", context=context))
        assert status == 401
        status, cookie = await anyio.to_thread.run_sync(lambda: _get(f"{base}/status?token={SECRET}", context=context))
        assert status == 200 and "HttpOnly" in cookie and "Secure" in cookie and SECRET not in cookie
        headers = {"Authorization": f"Bearer {SECRET}"}
        status, _ = await anyio.to_thread.run_sync(lambda: _get(f"{base}/api/status", context=context, headers=headers))
        assert status == 200
        status, _ = await anyio.to_thread.run_sync(lambda: _get(f"{base}/health", context=context))
        assert status == 200  # liveness probes need no secret


async def test_dashboard_beyond_loopback_needs_a_secret_or_insecure(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SecurityError, match="refusing to serve the dashboard on 0.0.0.0 without a secret"):
        async with SchedulerServer(security=Security(), dashboard_address="0.0.0.0:0"):
            pass
    with caplog.at_level(logging.WARNING, logger="dsched.dashboard"):
        async with SchedulerServer(security=Security(), dashboard_address="0.0.0.0:0", insecure=True) as server:
            assert server.dashboard_link is not None
    assert "without a secret" in caplog.text
    async with SchedulerServer(security=Security(), dashboard_address="127.0.0.1:0") as server:
        assert server.dashboard_link is not None  # loopback: open to this machine


# -- LocalCluster ----------------------------------------------------------------------------


def test_local_cluster_generates_a_secret_its_clients_use() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert len(cluster.security.secret) >= 40
        with Client(cluster) as client:
            assert client.submit(inc, 1).result() == 2
        # In Dask, Client(cluster.scheduler_address) works too: this process knows the secret.
        assert security_for(cluster.scheduler_address) is cluster.security
        with Client(cluster.scheduler_address) as client:
            assert client.submit(inc, 2).result() == 3
        with pytest.raises(HandshakeRefused, match="authentication failed"):
            Client(cluster.scheduler_address, security=Security(), timeout=5)
        address = cluster.scheduler_address
    assert security_for(address) != cluster.security  # forgotten once closed
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None, insecure=True) as open_cluster:
        assert open_cluster.security.secret == ""
    with pytest.raises(SecurityError, match="cannot load the TLS certificate"):
        LocalCluster(n_workers=1, security=Security(tls_cert="/nonexistent/node.pem"))
    # Client() starts a cluster with the security it is given.
    with Client(security=Security(secret=SECRET), n_workers=1, processes=False, dashboard_address=None) as client:
        assert client.cluster.security.secret == SECRET
        assert client.submit(inc, 3).result() == 4


@pytest.fixture(scope="module")
def tls_cluster(certs: Certs) -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, security=certs.security(secret="", mutual=True),
        dashboard_address=None, profile_interval=None, silence_logs=logging.DEBUG,
    ) as cluster:
        yield cluster


def test_tls_local_cluster_processes_run_a_graph_across_workers(tls_cluster: LocalCluster) -> None:
    assert tls_cluster.scheduler_address.startswith("tls://")
    assert all(address.startswith("tls://") for address in tls_cluster.workers)
    with Client(tls_cluster) as client:
        first, second = tls_cluster.workers
        xs = [client.submit(inc, i, workers=[first if i % 2 else second], pure=False) for i in range(10)]
        total = client.submit(sum, xs, workers=[first])
        assert total.result() == sum(range(1, 11))
        assert client.submit(add, total, xs[0], workers=[second]).result() == 56


def test_secret_never_on_a_command_line_or_in_the_logs(tls_cluster: LocalCluster) -> None:
    secret = tls_cluster.security.secret
    assert secret  # generated: mutual TLS was given without one
    processes = [tls_cluster.scheduler_process, *tls_cluster.worker_processes]
    for popen in processes:
        assert popen is not None
        assert not any(secret in str(arg) for arg in popen.args)  # type: ignore[union-attr]
        with open(f"/proc/{popen.pid}/cmdline", "rb") as f:
            assert secret.encode() not in f.read()
    logs = "\n".join(tls_cluster.get_logs().values())
    assert "DEBUG" in logs  # the children logged at debug level, and still:
    assert secret not in logs
    assert secret not in repr(tls_cluster) and secret not in repr(tls_cluster.security)


def test_children_of_a_cluster_ignore_the_parents_security_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A stale security file in the parent's environment must not reach the children.
    monkeypatch.setenv("DSCHED_SECURITY_FILE", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("DSCHED_SECRET", "the-parents-secret")
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None, profile_interval=None) as cluster:
        assert cluster.security.secret not in ("", "the-parents-secret")
        with Client(cluster) as client:
            assert client.submit(inc, 1).result() == 2
    assert os.environ["DSCHED_SECRET"] == "the-parents-secret"
