"""Real clients against a cachesvc process with ``--auth-file``: skopeo and Debian's docker log in and copy images
in and out, once with the Bearer challenge (the token flow through ``/token``) and once with the Basic challenge;
wrong credentials fail with 401 (never a 500) and a user without ``push`` is denied. TLS: skopeo, Python and the
operator CLI reach a ``--tls-cert``/``--tls-key`` server trusting only its self-signed certificate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachesvc.auth.headers import encode_basic
from tests.support.clients import ContainersConfig, DockerDaemon, run, skopeo_copy, tool_path
from tests.support.images import OciImage, build_busybox_layout, layout_blobs
from tests.support.servers import Cachesvc
from tests.support.skips import need

pytestmark = pytest.mark.e2e

ALICE = "alice:alice-secret"  # pull, push, delete on cache/ (see conftest.auth_toml)
BOB = "bob:bob-secret"  # pull on base/ only


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    need("busybox", "skopeo")
    return build_busybox_layout(tmp_path_factory.mktemp("busybox") / "layout")


@pytest.fixture(params=["bearer", "basic"])
def server(request: pytest.FixtureRequest, tmp_path: Path, auth_file: Path) -> Iterator[Cachesvc]:
    s = Cachesvc(tmp_path / "registry", extra_args=["--auth-file", str(auth_file),
                                                     "--auth-challenge", request.param])
    s.challenge = request.param  # type: ignore[attr-defined]
    s.start()
    try:
        yield s
    finally:
        s.stop()


def access_lines(server: Cachesvc, since: int = 0) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request the server logged (its text access log)."""
    out = []
    for line in server.log_text()[since:].splitlines():
        m = re.search(r" cachesvc\.access \S+ (GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) (\d{3}) ", line)
        if m:
            out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def logged_401(server: Cachesvc, since: int) -> bool:
    """Whether the server logged a 401 since ``since`` (its access log is written in batches every 50 ms)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if any(status == 401 for _, _, status in access_lines(server, since)):
            return True
        time.sleep(0.05)
    return False


def assert_no_server_errors(server: Cachesvc) -> None:
    time.sleep(0.2)  # let the last access-log batch land
    lines = access_lines(server)
    assert lines, server.log_tail()
    assert not [x for x in lines if x[2] >= 500], server.log_tail()
    assert "Traceback" not in server.log_text()


def assert_token_flow(server: Cachesvc, used: bool) -> None:
    tokens = [x for x in access_lines(server) if x[1] == "/token"]
    if used:
        assert any(status == 200 for _, _, status in tokens), "the client never fetched a token"
    else:
        assert tokens == [], "the Basic challenge should not send clients to /token"


def failed(exc: pytest.ExceptionInfo[subprocess.CalledProcessError]) -> str:
    return str(exc.value.output).lower()


def test_skopeo(tmp_path: Path, server: Cachesvc, busybox: OciImage) -> None:
    need("skopeo")
    cfg = ContainersConfig(tmp_path / "containers", insecure_hosts=[server.host])
    dest = f"docker://{server.host}/cache/busybox:v1"

    with pytest.raises(subprocess.CalledProcessError) as e:  # no credentials
        skopeo_copy(busybox.ref, dest, config=cfg)
    assert "unauthorized" in failed(e) or "authentication required" in failed(e)
    mark = len(server.log_text())
    with pytest.raises(subprocess.CalledProcessError) as e:  # wrong password
        skopeo_copy(busybox.ref, dest, config=cfg, extra_args=["--dest-creds", "alice:wrong"])
    assert "unauthorized" in failed(e) or "401" in failed(e)
    assert logged_401(server, mark)

    # credentials on the command line
    skopeo_copy(busybox.ref, dest, config=cfg, extra_args=["--dest-creds", ALICE])
    # a user without push on cache/ is denied
    with pytest.raises(subprocess.CalledProcessError) as e:
        skopeo_copy(busybox.ref, f"docker://{server.host}/cache/bob:v1", config=cfg, extra_args=["--dest-creds", BOB])
    assert "403 (forbidden)" in failed(e) or "denied" in failed(e)

    # skopeo login (into the private auth file), then copy out with the stored credentials
    skopeo = tool_path("skopeo")
    mark = len(server.log_text())
    bad = run([skopeo, "login", "--tls-verify=false", "-u", "alice", "-p", "nope", server.host], env=cfg.env(),
              check=False)
    assert bad.returncode != 0 and "invalid username/password" in bad.output, bad.output
    assert logged_401(server, mark)
    run([skopeo, "login", "--tls-verify=false", "-u", "alice", "-p", "alice-secret", server.host], env=cfg.env())
    out = tmp_path / "out"
    skopeo_copy(dest, f"oci:{out}:copied", config=cfg)
    assert layout_blobs(out) == layout_blobs(busybox.layout)

    assert_token_flow(server, used=server.challenge == "bearer")  # type: ignore[attr-defined]
    assert_no_server_errors(server)


@pytest.fixture(scope="module")
def docker_daemon() -> Iterator[DockerDaemon]:
    need("dockerd", "docker")
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    drivers = os.environ.get("E2E_DOCKER_STORAGE_DRIVER", "overlay2,vfs").split(",")
    with DockerDaemon(storage_drivers=[d.strip() for d in drivers if d.strip()]) as daemon:
        yield daemon


def test_docker(tmp_path: Path, server: Cachesvc, busybox: OciImage, docker_daemon: DockerDaemon) -> None:
    docker = docker_daemon
    docker.prune_all()
    host = server.host
    cfg = ContainersConfig(tmp_path / "containers", insecure_hosts=[host])
    skopeo_copy(busybox.ref, f"docker://{host}/cache/base:latest", config=cfg, extra_args=["--dest-creds", ALICE])

    mark = len(server.log_text())
    bad = docker.docker("login", host, "-u", "alice", "-p", "wrong", check=False)
    assert bad.returncode != 0 and ("401" in bad.output or "unauthorized" in bad.output.lower()), bad.output
    assert logged_401(server, mark)
    with pytest.raises(subprocess.CalledProcessError):  # not logged in
        docker.pull(f"{host}/cache/base:latest")

    assert "Login Succeeded" in docker.docker("login", host, "-u", "alice", "-p", "alice-secret").output
    docker.pull(f"{host}/cache/base:latest")
    copy = f"{host}/cache/copy:v1"
    docker.docker("tag", f"{host}/cache/base:latest", copy)
    docker.push(copy)
    docker.prune_all()
    assert docker.images() == []
    docker.pull(copy)

    docker.docker("login", host, "-u", "bob", "-p", "bob-secret")
    with pytest.raises(subprocess.CalledProcessError) as e:
        docker.push(f"{host}/cache/copy:v1")
    assert "denied" in failed(e)
    docker.docker("logout", host)
    docker.prune_all()

    assert_token_flow(server, used=server.challenge == "bearer")  # type: ignore[attr-defined]
    assert_no_server_errors(server)


# -- TLS --------------------------------------------------------------------------------------------------------


class TlsCachesvc(Cachesvc):
    """cachesvc with --tls-cert/--tls-key: ready when it answers over TLS trusting ``cafile``."""

    def __init__(self, root: Path, cafile: Path, extra_args: list[str]) -> None:
        super().__init__(root, extra_args=extra_args)
        self.context = ssl.create_default_context(cafile=str(cafile))

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"cachesvc exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1, context=self.context).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"not ready over TLS:\n{self.log_tail()}")


def self_signed(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    # the key stays out of the directory given to skopeo, which takes any *.key there for a client key
    cert, key = directory / "ca.crt", directory.parent / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls(tmp_path: Path, auth_file: Path, busybox: OciImage) -> None:
    certs = tmp_path / "certs"
    cert, key = self_signed(certs)
    server = TlsCachesvc(tmp_path / "registry", cert, ["--auth-file", str(auth_file), "--tls-cert", str(cert),
                                                       "--tls-key", str(key)])
    with server:
        ctx = server.context
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server.url}/v2/", context=ctx, timeout=10)
        assert e.value.code == 401
        assert e.value.headers["WWW-Authenticate"].startswith(f'Bearer realm="https://{server.host}/token"')
        req = urllib.request.Request(f"{server.url}/v2/", headers={"Authorization": encode_basic("ops", "ops-secret")})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            assert resp.status == 200
        with pytest.raises(OSError):  # nothing answers plain HTTP on a TLS port
            urllib.request.urlopen(f"http://{server.host}/v2/", timeout=10).close()

        # skopeo verifying the certificate (no `insecure`): push with the token flow, then read back
        cfg = ContainersConfig(tmp_path / "containers")
        skopeo = tool_path("skopeo")
        ref = f"docker://{server.host}/cache/tls:v1"
        run([skopeo, "--policy", str(cfg.policy), "copy", "--preserve-digests", "--dest-cert-dir", str(certs),
             "--dest-creds", ALICE, busybox.ref, ref], env=cfg.env())
        raw = run([skopeo, "--policy", str(cfg.policy), "inspect", "--raw", "--cert-dir", str(certs),
                   "--creds", ALICE, ref], env=cfg.env()).output
        assert json.loads(raw)["config"]["digest"] == busybox.config.digest

        # the operator CLI over TLS: needs admin credentials (CACHESVC_CREDS) and trusts SSL_CERT_FILE
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        cli = [sys.executable, "-m", "cachesvc", "usage", "--url", server.url]
        r = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode != 0 and "UNAUTHORIZED" in r.stderr, r.stderr
        r = subprocess.run(cli, capture_output=True, text=True, env={**env, "CACHESVC_CREDS": ALICE}, timeout=60)
        assert r.returncode != 0 and "DENIED" in r.stderr, r.stderr
        r = subprocess.run(cli, capture_output=True, text=True, env={**env, "CACHESVC_CREDS": "ops:ops-secret"},
                           timeout=60)
        assert r.returncode == 0 and "cache/tls" in r.stdout, r.stderr
