"""End-to-end build benchmark: how long a CI image build takes with each way of keeping its layer cache.

``python -m benchmarks.build_bench --smoke|--full [--engine docker|buildah]``, or ``run(smoke, engine)``.

A real build engine builds the fixture project (``benchmarks/fixture_project.py``: a multi-stage Dockerfile on
a busybox-static base, dependencies ~150 MB in many small files, build output ~60 MB, assets, a small final
stage; each RUN step's CPU work is a configured duration). Scenarios, each on a fresh builder (engine state
wiped) except ``local``:

- ``cold``: no cache at all;
- ``tarball``: the hosted-CI pattern: the cache is archived (tar + zstd) and copied to "remote storage" at a
  limited bandwidth after the build, and copied back, extracted and imported before it (both in the total);
- ``remote-registry``: CNCF distribution on another "host" (a network namespace behind a ``tc tbf`` veth; with
  ``--link-rtt MS`` also behind a delay line, ``benchmarks/delayline.py``, that adds that round-trip time);
- ``cachesvc``: cachesvc co-located on the builder (loopback, local disk), started by launch.sh;
- ``distribution-colocated`` and ``memory-colocated``: distribution, and a minimal in-memory registry
  (``benchmarks/memregistry.py``, the floor any registry can reach), in cachesvc's place;
- ``local``: the engine's own state kept (the floor for all the others).

Every job is measured twice: ``warm`` (the priming build's sources: every step must come from the cache and
the image must be identical to the priming build's) and ``changed`` (one source file edited: only the build
step and the final stage's steps may run). Results: ``benchmarks/results/build[-ENGINE][-smoke].{json,md}``
and ``-times.png``/``-bytes.png`` charts. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks import build_env as env
from benchmarks import build_report
from benchmarks.fixture_project import CHANGED_STEPS, STEPS, UNCHANGED_LAYERS, Fixture, change_source, write_context
from benchmarks.fixture_project import FULL as FULL_FIXTURE
from benchmarks.fixture_project import SMOKE as SMOKE_FIXTURE
from benchmarks.netns import REMOTE_ADDR, NetnsPair
from benchmarks.procstat import ProcessCpu, client_cpu_seconds, cpu_by_name, machine_busy_seconds
from tests.support.clients import ContainersConfig, parse_request_log
from tests.support.images import build_busybox_layout

RESULTS = Path(__file__).resolve().parent / "results"
ENGINES = ("docker", "buildah", "buildctl")
REGISTRIES = ("remote-registry", "cachesvc", "distribution-colocated", "memory-colocated")
SCENARIOS = ("cold", "tarball", *REGISTRIES, "local")
MB = 1_000_000

#: Targets from the project's issue, on the full warm build (job totals). (subject, reference, factor):
#: subject's time * factor <= reference's time.
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("cachesvc", "distribution-colocated", 1.0, "no slower than distribution co-located"),
    ("cachesvc", "memory-colocated", 1 / 1.10, "within 10 % of the in-memory registry"),
    ("cachesvc", "tarball", 2.0, "at least 2x faster than tarball"),
    ("cachesvc", "remote-registry", 1.3, "at least 1.3x faster than remote-registry"),
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchProfile:
    """How big and how long: the fixture, repetitions, and the modelled network speeds."""

    name: str
    reps: int
    fixture: Fixture
    tarball_rate: float = 100 * MB  # bytes/s to and from the hosted-CI cache storage
    link_rate: int = 1_000_000_000  # bits/s of the link to the remote registry
    link_rtt_ms: float = 0.0  # round-trip time added to that link by a delay line (0: the veth's own ~0.05 ms)
    job_timeout: float = 1800


SMOKE = BenchProfile("smoke", 1, SMOKE_FIXTURE)
FULL = BenchProfile("full", 3, FULL_FIXTURE)


@dataclass
class Job:
    """One measured CI job: restore (tarball) + build + export, what moved, and whether it verified."""

    scenario: str
    case: str  # cold | warm | changed | first-export
    rep: int
    total_s: float = 0.0
    restore_s: float = 0.0
    build_s: float = 0.0
    export_s: float = 0.0
    bytes_moved: int = 0
    archive_bytes: int = 0
    requests: int | None = None
    steps: int = 0
    cached: int = 0
    verified: bool = True
    problem: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    cores: float = 0.0  # cores the benchmark's processes (engine, registries, clients) used during the job
    cpu_by_process: dict[str, float] = field(default_factory=dict)  # their CPU seconds by process name
    other_cores: float = 0.0  # cores anything else on the machine used meanwhile (perturbation)


class Counters:
    """Bytes over the builder's loopback and the remote link, and CPU use, across one job."""

    def __init__(self, pair: NetnsPair) -> None:
        self.pair = pair
        self.lo = pair.loopback_bytes()
        self.link = pair.remote_bytes()
        self.busy = machine_busy_seconds()
        self.procs = pair.processes()
        self.ours = self._ours(self.procs)
        self.t0 = time.monotonic()

    @staticmethod
    def _ours(procs: dict[int, ProcessCpu]) -> float:
        """CPU seconds of the benchmark's own processes: everything in the namespaces (with the children they
        reaped: RUN steps, shims'), and this process with its waited-for children (the engine's client)."""
        return sum(p.total for p in procs.values()) + client_cpu_seconds()

    def bytes(self) -> int:
        return (self.pair.loopback_bytes() - self.lo) + (self.pair.remote_bytes() - self.link)

    def fill(self, job: Job) -> None:
        """The job's cores (ours and anything else's) and CPU seconds by process, from one snapshot of /proc."""
        procs = self.pair.processes()
        elapsed = max(time.monotonic() - self.t0, 1e-3)
        ours = (self._ours(procs) - self.ours) / elapsed
        busy = (machine_busy_seconds() - self.busy) / elapsed
        job.cores, job.other_cores = round(ours, 2), round(max(0.0, busy - ours), 2)
        job.cpu_by_process = cpu_by_name(self.procs, procs)


def wait_quiet(limit: float, progress: Progress, threshold: float = 0.3) -> float:
    """Before a job (the benchmark's own processes idle): wait up to ``limit`` seconds for the machine's other
    work to drop under ``threshold`` cores; returns the last reading."""
    def busy(seconds: float) -> float:
        before = machine_busy_seconds()
        time.sleep(seconds)
        return (machine_busy_seconds() - before) / seconds

    if limit <= 0:
        return 0.0
    deadline = time.monotonic() + limit
    load = busy(1.0)
    while load > threshold and time.monotonic() < deadline:
        load = busy(2.0)
    if load > threshold:
        progress(f"  (the machine stays busy: {load:.2f} cores used by other work)")
    return load


def throttled_copy(src: Path, dst: Path, rate: float, chunk: int = 4 << 20) -> float:
    """Copy ``src`` to ``dst`` no faster than ``rate`` bytes/s (paced per 4 MiB chunk); returns seconds."""
    t0 = time.monotonic()
    sent = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(chunk):
            fout.write(block)
            sent += len(block)
            ahead = t0 + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return time.monotonic() - t0


def expected_cached(case: str) -> list[tuple[str, str, bool]]:
    """The (stage, instruction, cached) multiset a correct build reports, in fixture order."""
    if case == "warm":
        return [(s, i, True) for s, i in STEPS]
    changed = list(CHANGED_STEPS)
    out = []
    for step in STEPS:
        if step in changed:
            changed.remove(step)
            out.append((*step, False))
        else:
            out.append((*step, True))
    return out


def same_steps(got: list[tuple[str, str, bool]], want: list[tuple[str, str, bool]]) -> bool:
    return sorted(got) == sorted(want)


class BuildBench:
    """Sets up the builder, the registries and the network, runs every scenario, keeps every job."""

    def __init__(self, profile: BenchProfile, engine: str, workdir: Path, progress: Progress,
                 scenarios: tuple[str, ...] = SCENARIOS, keep_logs: bool = False, quiet_wait: float = 0.0) -> None:
        if engine == "buildctl":
            raise SystemExit("--engine buildctl: buildctl/buildkitd are not installed here and not supported yet "
                             "(launch.sh's default engine; README 'Point BuildKit at it' has the flags)")
        if engine not in ENGINES:
            raise SystemExit(f"unknown engine {engine!r}: choose docker or buildah")
        if engine == "docker" and not shutil.which("unpigz"):
            progress("warning: no unpigz on PATH: dockerd will decompress layers with Go's gzip, unlike the builder "
                     "builder-image provisions (apt-get install pigz)")
        self.p = profile
        self.engine_name = engine
        self.workdir = workdir
        self.progress = progress
        self.scenarios = scenarios
        self.keep_logs = keep_logs
        self.quiet_wait = quiet_wait
        self.jobs: list[Job] = []
        self.notes: list[str] = []
        self.facts: dict[str, Any] = {}
        self.prime: dict[int, env.Build] = {}
        #: buildah's priming build pushes its cache here (--cache-to); the other registries get a copy
        self.prime_registry = next((s for s in ("memory-colocated", *REGISTRIES) if s in scenarios), None)

    # -- set-up -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """tmpfs mounts, namespaces, registries, base image, the builder; all undone on exit."""
        with contextlib.ExitStack() as stack:
            self.builder_root = self.workdir / "builder"
            self.data = self.workdir / "data"
            env.mount_tmpfs(self.builder_root)
            stack.callback(env.unmount_under, self.builder_root, include_self=True)
            env.mount_tmpfs(self.data)
            stack.callback(env.unmount_under, self.data, include_self=True)
            self.logs = self.data / "logs"
            self.logs.mkdir()
            if self.keep_logs:
                stack.callback(self.save_logs)
            self.pair = NetnsPair(self.p.link_rate).create()
            stack.callback(self.pair.delete)
            self.servers: dict[str, env.NsServer] = {}
            wanted = {"base": lambda: env.memregistry("base", self.pair, env.BASE_PORT, self.logs)}
            if "memory-colocated" in self.scenarios:
                wanted["memory-colocated"] = lambda: env.memregistry("memory", self.pair, env.MEM_PORT, self.logs)
            if "distribution-colocated" in self.scenarios:
                wanted["distribution-colocated"] = lambda: env.colocated_distribution(self.pair, self.data, self.logs)
            if "remote-registry" in self.scenarios:
                rtt = self.p.link_rtt_ms
                wanted["remote-registry"] = lambda: env.remote_distribution(self.pair, self.data, self.logs, rtt)
                if rtt > 0:
                    wanted["remote-delay"] = lambda: env.remote_delay(self.pair, self.logs, rtt, self.p.link_rate)
            if self.engine_name == "buildah" and "cachesvc" in self.scenarios:
                wanted["cachesvc"] = lambda: env.cachesvc_server(self.pair, self.builder_root / "cachesvc", self.logs)
            for key, make in wanted.items():
                server = make()
                stack.callback(server.stop)
                server.start()
                self.servers[key] = server
            self.progress(f"registries up: {', '.join(self.servers)}; link to the remote: "
                          f"{self.pair.qdisc_text() or 'unshaped'}, +{self.p.link_rtt_ms:g} ms RTT")
            conf = ContainersConfig(self.data / "containers", insecure_hosts=[f"127.0.0.1:{env.BASE_PORT}"])
            image = build_busybox_layout(self.data / "busybox")
            self.base_ref = f"127.0.0.1:{env.BASE_PORT}/base/busybox:latest"
            env.skopeo_push(self.pair, image.ref, f"docker://{self.base_ref}", conf)
            insecure = [f"127.0.0.1:{port}" for port in (env.CACHESVC_PORT, env.DIST_PORT, env.MEM_PORT,
                                                          env.BASE_PORT)] + [f"{REMOTE_ADDR}:{env.REMOTE_PORT}"]
            if self.engine_name == "docker":
                run_dir = Path(f"/run/cbench-{os.getpid()}")
                self.engine: env.DockerEngine | env.BuildahEngine = env.DockerEngine(
                    self.pair, self.builder_root, run_dir, self.data / "docker-client")
                stack.callback(lambda: shutil.rmtree(run_dir, ignore_errors=True))
            else:
                self.engine = env.BuildahEngine(self.pair, self.builder_root, self.data / "buildah-conf", insecure)
                self.skopeo_conf = self.engine.config
            stack.callback(self.engine.stop)
            self.progress(f"starting the builder ({self.engine_name})")
            self.engine.fresh()
            self.facts = {"engine": self.engine.info(), "link": self.pair.qdisc_text(),
                          "link_rtt_ms": self.p.link_rtt_ms,
                          "builder_tmpfs": str(self.builder_root), "data_tmpfs": str(self.data)}
            if isinstance(self.engine, env.DockerEngine):
                self.facts["launch_sh_flags"] = self.engine.flags
            yield

    def save_logs(self) -> None:
        """Copy the servers' and the builder's logs off the tmpfs (``--keep``)."""
        kept = self.workdir / "logs"
        shutil.copytree(self.logs, kept, dirs_exist_ok=True)
        if (self.builder_root / "log").is_dir():
            shutil.copytree(self.builder_root / "log", kept / "builder", dirs_exist_ok=True)

    # -- helpers ----------------------------------------------------------------------------------------------
    def host(self, scenario: str) -> str:
        if scenario == "remote-registry":
            return f"{REMOTE_ADDR}:{env.REMOTE_PORT}"
        port = {"cachesvc": env.CACHESVC_PORT, "distribution-colocated": env.DIST_PORT,
                "memory-colocated": env.MEM_PORT}[scenario]
        return f"127.0.0.1:{port}"

    def ref(self, scenario: str) -> str:
        """Docker: the image (with its inline cache) the CI job pushes; buildah: the cache repository."""
        if self.engine_name == "docker":
            if scenario == "cachesvc" and isinstance(self.engine, env.DockerEngine) and self.engine.push_refs:
                return self.engine.push_refs[0]  # exactly what launch.sh printed
            return f"{self.host(scenario)}/cache/bench/app:main"
        return f"{self.host(scenario)}/cache/bench/app-layers"

    def log_of(self, scenario: str) -> Path | None:
        if scenario == "cachesvc" and self.engine_name == "docker":
            return self.builder_root / "log" / "cachesvc.log"
        server = self.servers.get(scenario)
        return server.log if server else None

    def mem_requests(self) -> int:
        server = self.servers["memory-colocated"]

        def get() -> int:
            with urllib.request.urlopen(server.url + "/_mem/stats", timeout=5) as resp:
                return int(json.loads(resp.read())["requests"])

        return NetnsPair.call_in(self.pair.builder, get)

    def log_mark(self, scenario: str) -> int:
        """Where the registry's request count stands now (its access log's size; the in-memory registry's
        counter)."""
        if scenario == "memory-colocated" and scenario in self.servers:
            return self.mem_requests()
        log = self.log_of(scenario)
        if log is None:
            return 0
        with contextlib.suppress(OSError):
            return log.stat().st_size
        return 0

    def requests_since(self, scenario: str, mark: int) -> int | None:
        """Requests the scenario's registry served since ``mark``."""
        if scenario not in REGISTRIES:
            return None
        if scenario == "memory-colocated" and scenario in self.servers:
            return self.mem_requests() - mark
        log = self.log_of(scenario)
        if log is None:
            return None
        time.sleep(0.3)  # cachesvc batches its access log (<= 50 ms)
        with contextlib.suppress(OSError), open(log, "rb") as f:
            f.seek(mark)
            return len(parse_request_log(f.read().decode(errors="replace")))
        return None

    def verify(self, job: Job, build: env.Build, rep: int) -> None:
        want = expected_cached(job.case)
        job.steps, job.cached = len(build.steps), build.cached
        prime = self.prime[rep]
        problems = []
        if not same_steps(build.steps, want):
            ran = [f"{s} {i}" for s, i, c in build.steps if not c]
            problems.append(f"steps: {job.cached}/{job.steps} cached, re-ran {ran or 'nothing'}; expected "
                            f"{sum(1 for w in want if w[2])}/{len(want)} cached")
        if job.case == "warm" and build.image_id != prime.image_id:
            problems.append(f"image {build.image_id[:19]} differs from the priming build's {prime.image_id[:19]}")
        if job.case == "changed":
            if build.layers[:UNCHANGED_LAYERS] != prime.layers[:UNCHANGED_LAYERS]:
                problems.append("the unchanged layers differ from the priming build's")
            if build.layers[UNCHANGED_LAYERS:] == prime.layers[UNCHANGED_LAYERS:]:
                problems.append("the changed layers are identical to the priming build's")
        if problems:
            job.verified = False
            job.problem = "; ".join(problems)

    def report(self, job: Job) -> None:
        self.jobs.append(job)
        parts = [f"total {job.total_s:.2f}s"]
        if job.case != "first-export":
            parts.append(f"(restore {job.restore_s:.2f} + build {job.build_s:.2f} + export {job.export_s:.2f})")
        parts.append(f"{job.bytes_moved / MB:.1f} MB moved")
        if job.requests is not None:
            parts.append(f"{job.requests} requests")
        if job.steps:
            parts.append(f"{job.cached}/{job.steps} cached")
        parts.append(f"cores {job.cores:.2f} ours / {job.other_cores:.2f} other")
        parts.append("verified" if job.verified else f"NOT VERIFIED: {job.problem}")
        self.progress(f"  rep {job.rep + 1} {job.scenario} {job.case}: " + ", ".join(parts))

    # -- engine operations ------------------------------------------------------------------------------------
    def remote_archive(self) -> Path:
        return self.data / "remote-storage" / f"{self.engine_name}-cache.tar.zst"

    def tar_save(self, tag: str) -> tuple[float, int]:
        """Archive the cache locally (tar + zstd), then upload it: seconds, archive bytes."""
        local = self.data / "ci-runner" / "cache.tar.zst"
        local.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if isinstance(self.engine, env.DockerEngine):
            self.engine.save_archive(tag, local)
        else:
            self.engine.save_archive(local)
        size = local.stat().st_size
        throttled_copy(local, self.remote_archive(), self.p.tarball_rate)
        local.unlink()
        return time.monotonic() - t0, size

    def tar_restore(self) -> tuple[float, int]:
        """Download the archive, extract and import it: seconds, archive bytes."""
        local = self.data / "ci-runner" / "cache.tar.zst"
        t0 = time.monotonic()
        throttled_copy(self.remote_archive(), local, self.p.tarball_rate)
        size = local.stat().st_size
        self.engine.load_archive(local)
        local.unlink()
        if isinstance(self.engine, env.BuildahEngine):
            self.engine.start()
        return time.monotonic() - t0, size

    def build(self, ctx: Path, scenario: str) -> env.Build:
        """One build as the CI job for ``scenario`` runs it (its cache flags, its tag)."""
        if isinstance(self.engine, env.DockerEngine):
            if scenario in REGISTRIES:
                return self.engine.build(ctx, self.ref(scenario), cache_from=[self.ref(scenario)])
            if scenario == "tarball":
                return self.engine.build(ctx, "bench/app:main", cache_from=["bench/app:main"])
            return self.engine.build(ctx, "bench/app:main")
        tag = "localhost/bench/app:main"
        if scenario in REGISTRIES:
            return self.engine.build(ctx, tag, cache_from=self.ref(scenario), cache_to=self.ref(scenario))
        if scenario == "cold":
            return self.engine.build(ctx, tag, cache_to=self.ref(self.prime_registry) if self.prime_registry else None)
        return self.engine.build(ctx, tag)

    def export(self, scenario: str) -> float:
        """What the CI job does after its build to keep the cache: docker push (buildah pushed during the
        build with --cache-to)."""
        if isinstance(self.engine, env.DockerEngine) and scenario in REGISTRIES:
            return self.engine.push(self.ref(scenario)).seconds
        return 0.0

    # -- the scenarios ----------------------------------------------------------------------------------------
    def run_prime(self, rep: int, ctx: Path) -> None:
        """The priming (``cold``) build on a fresh builder, then its cache exported to every store."""
        self.engine.fresh()
        wait_quiet(self.quiet_wait, self.progress)
        counters = Counters(self.pair)
        build = self.build(ctx, "cold")
        job = Job("cold", "cold", rep, total_s=build.seconds, build_s=build.seconds, bytes_moved=counters.bytes(),
                  steps=len(build.steps), cached=build.cached, phases=build.phases)
        counters.fill(job)
        self.prime[rep] = build
        if build.cached:
            job.verified, job.problem = False, f"{build.cached} steps CACHED on a fresh builder without cache"
        self.report(job)
        pushed_keys = [key for _, key in env.BUILDAH_PUSHED.findall(build.output)]
        for scenario in self.scenarios:
            if scenario not in (*REGISTRIES, "tarball"):
                continue
            counters = Counters(self.pair)
            mark = self.log_mark(scenario)
            job = Job(scenario, "first-export", rep)
            if scenario == "tarball":
                job.export_s, job.archive_bytes = self.tar_save("bench/app:main")
                job.bytes_moved = job.archive_bytes
            elif isinstance(self.engine, env.DockerEngine):
                self.engine.tag("bench/app:main", self.ref(scenario))
                job.export_s = self.engine.push(self.ref(scenario)).seconds
            elif scenario != self.prime_registry:  # buildah: copy the cache images the priming build pushed
                t0 = time.monotonic()
                src = self.ref(str(self.prime_registry))
                for key in pushed_keys:
                    env.skopeo_push(self.pair, f"docker://{src}:{key}", f"docker://{self.ref(scenario)}:{key}",
                                    self.skopeo_conf)
                job.export_s = time.monotonic() - t0
                job.problem = f"copied with skopeo from {self.prime_registry} (not an engine export)"
            else:
                job.export_s = 0.0
                job.problem = "pushed by the priming build itself (--cache-to)"
            job.total_s = job.export_s
            job.bytes_moved += counters.bytes()
            job.requests = self.requests_since(scenario, mark)
            counters.fill(job)
            self.report(job)

    def run_job(self, rep: int, scenario: str, case: str, ctx: Path) -> None:
        """One CI job: fresh builder (not for local), restore, build, verify, export."""
        if scenario != "local":
            self.engine.fresh()
        wait_quiet(self.quiet_wait, self.progress)
        counters = Counters(self.pair)
        mark = self.log_mark(scenario)
        job = Job(scenario, case, rep)
        archive = 0
        if scenario == "tarball":
            job.restore_s, archive = self.tar_restore()
        build = self.build(ctx, scenario)
        job.build_s, job.phases = build.seconds, dict(build.phases)
        self.verify(job, build, rep)
        if scenario == "tarball":
            job.export_s, saved = self.tar_save("bench/app:main")
            archive += saved
        else:
            job.export_s = self.export(scenario)
        job.archive_bytes = archive
        job.total_s = job.restore_s + job.build_s + job.export_s
        job.bytes_moved = counters.bytes() + archive
        job.requests = self.requests_since(scenario, mark)
        counters.fill(job)
        self.report(job)

    def run(self) -> None:
        order = [s for s in SCENARIOS if s in self.scenarios and s not in ("cold", "local")]
        with self.environment():
            for rep in range(self.p.reps):
                nonce = uuid.uuid4().hex
                ctx = write_context(self.data / "ctx-a", self.base_ref, self.p.fixture, nonce)
                changed = self.data / "ctx-b"
                shutil.rmtree(changed, ignore_errors=True)
                shutil.copytree(ctx, changed)
                change_source(changed, rep + 1)
                self.progress(f"== repetition {rep + 1}/{self.p.reps} (nonce {nonce[:8]})")
                self.run_prime(rep, ctx)
                if "local" in self.scenarios:
                    self.run_job(rep, "local", "warm", ctx)
                    self.run_job(rep, "local", "changed", changed)
                # rotate the order between repetitions so that drift in the machine's load spreads evenly
                shift = rep % max(len(order), 1)
                for scenario in order[shift:] + order[:shift]:
                    self.run_job(rep, scenario, "warm", ctx)
                    self.run_job(rep, scenario, "changed", changed)
            if isinstance(self.engine, env.DockerEngine):
                self.facts["dockerd_start_seconds"] = round(statistics.median(self.engine.start_seconds), 2)

    # -- summary ----------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Medians per scenario and case, speed-ups against cold, overheads against local, targets."""
        table: dict[str, dict[str, Any]] = {}
        for case in ("cold", "warm", "changed", "first-export"):
            for scenario in SCENARIOS:
                jobs = [j for j in self.jobs if j.scenario == scenario and j.case == case]
                if not jobs:
                    continue
                row: dict[str, Any] = {"n": len(jobs), "verified": all(j.verified for j in jobs)}
                for key in ("total_s", "restore_s", "build_s", "export_s", "bytes_moved", "archive_bytes"):
                    row[key] = statistics.median(getattr(j, key) for j in jobs)
                row["totals"] = [round(j.total_s, 3) for j in jobs]
                reqs = [j.requests for j in jobs if j.requests is not None]
                row["requests"] = statistics.median(reqs) if reqs else None
                phase_keys = sorted({k for j in jobs for k in j.phases})
                row["phases"] = {k: statistics.median(j.phases.get(k, 0.0) for j in jobs) for k in phase_keys}
                row["cores"] = statistics.median(j.cores for j in jobs)
                names = {k for j in jobs for k in j.cpu_by_process}
                row["cpu_by_process"] = dict(sorted(
                    ((k, round(statistics.median(j.cpu_by_process.get(k, 0.0) for j in jobs), 2)) for k in names),
                    key=lambda kv: -kv[1]))
                row["other_cores"] = max(j.other_cores for j in jobs)
                table.setdefault(case, {})[scenario] = row
        cold = table.get("cold", {}).get("cold", {}).get("total_s")
        for case in ("warm", "changed"):
            rows = table.get(case, {})
            local = rows.get("local", {}).get("total_s")
            local_build = rows.get("local", {}).get("build_s")
            for scenario, row in rows.items():
                row["speedup_vs_cold"] = cold / row["total_s"] if cold and row["total_s"] else None
                row["overhead_vs_local_s"] = row["total_s"] - local if local is not None else None
                row["overhead_vs_local"] = row["total_s"] / local - 1 if local else None
                # the cache import: all a fresh builder spends on getting the cache, beyond what the same
                # build costs with the engine's own state (local)
                row["import_s"] = (row["restore_s"] + max(0.0, row["build_s"] - local_build)
                                   if local_build is not None and scenario != "local" else 0.0)
        if "cold" in table:
            table["cold"]["cold"]["speedup_vs_cold"] = 1.0
        targets = []
        warm = table.get("warm", {})
        for subject, reference, factor, text in TARGETS:
            a, b = warm.get(subject, {}).get("total_s"), warm.get(reference, {}).get("total_s")
            if a is None or b is None:
                continue
            targets.append({"subject": subject, "reference": reference, "text": text, "factor": factor,
                            "subject_s": a, "reference_s": b, "ratio": b / a if a else None,
                            "met": a * factor <= b})
        return {"table": table, "targets": targets}


def versions() -> dict[str, str]:
    import cachesvc

    out = {"cachesvc": cachesvc.__version__, "python": platform.python_version()}
    for name, cmd in (("docker", ["/usr/bin/docker", "--version"]), ("buildah", ["buildah", "--version"]),
                      ("distribution", [env.DISTRIBUTION_BIN, "--version"]), ("zstd", ["zstd", "--version"])):
        with contextlib.suppress(OSError):
            out[name] = env.run(cmd, check=False, timeout=20).output.strip().splitlines()[0]
    # dockerd decompresses gzip layers with unpigz when it is on PATH (Go's gzip otherwise, about half as fast
    # here): builder-image installs pigz, so the benchmark's builder should have it too.
    out["unpigz"] = shutil.which("unpigz") or ""
    return out


def machine(workdir: Path) -> dict[str, Any]:
    """The machine facts the registry benchmark records, plus the load average just before."""
    from benchmarks.run import machine as registry_machine

    facts = registry_machine(workdir)
    return {**facts, "loadavg_before": os.getloadavg()[0], "workdir": str(workdir)}


class Stamp:
    """Progress lines on stderr, prefixed with the time since the start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=sys.stderr, flush=True)


def result_name(profile: BenchProfile, engine: str) -> str:
    """``build[-ENGINE][-rttNms][-smoke]``: a run with a modelled RTT does not overwrite the stock result."""
    return ("build" + ("" if engine == "docker" else f"-{engine}")
            + (f"-rtt{profile.link_rtt_ms:g}ms" if profile.link_rtt_ms > 0 else "")
            + ("-smoke" if profile.name == "smoke" else ""))


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def variant_text(profile: BenchProfile) -> str:
    """How ``profile`` departs from its stock profile (empty if it does not)."""
    stock = SMOKE if profile.name == "smoke" else FULL
    changes = [f"{k} {getattr(profile.fixture, k):g} (stock {getattr(stock.fixture, k):g})"
               for k in asdict(stock.fixture) if getattr(profile.fixture, k) != getattr(stock.fixture, k)]
    changes += [f"{k} {getattr(profile, k):g} (stock {getattr(stock, k):g})"
                for k in ("reps", "tarball_rate", "link_rate", "link_rtt_ms")
                if getattr(profile, k) != getattr(stock, k)]
    return "; ".join(changes)


def run(smoke: bool, engine: str = "docker", *, profile: BenchProfile | None = None,
        workdir: Path | None = None, out: Path | None = RESULTS, progress: Progress | None = None,
        scenarios: tuple[str, ...] = SCENARIOS, keep: bool = False, quiet_wait: float = 0.0) -> dict[str, Any]:
    """Run the build benchmark; writes ``out/<name>.{json,md,-*.png}`` (unless ``out`` is None) and returns the
    result (``result["ok"]`` is False if any build failed its verification)."""
    if os.geteuid() != 0:
        raise SystemExit("the build benchmark needs root (tmpfs mounts, network namespaces, dockerd)")
    profile = profile or (SMOKE if smoke else FULL)
    progress = progress or Stamp()
    scenarios = tuple(s for s in SCENARIOS if s in scenarios)
    if "cold" not in scenarios:
        scenarios = ("cold", *scenarios)
    base = Path(workdir or os.environ.get("BENCH_WORKDIR", "/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    wd = Path(tempfile.mkdtemp(prefix="cachesvc-build-", dir=base))
    started = time.time()
    bench = BuildBench(profile, engine, wd, progress, scenarios, keep_logs=keep, quiet_wait=quiet_wait)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    progress(f"build benchmark ({profile.name}, engine {engine}) in {wd}; fixture: {profile.fixture.describe()}")
    error = ""
    try:
        bench.run()
    except Exception as e:  # keep what was measured; the error goes into the result
        error = f"{type(e).__name__}: {e}"
        progress(f"ERROR: {error}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if keep:
            progress(f"kept the logs in {wd / 'logs'}")
        else:
            shutil.rmtree(wd, ignore_errors=True)
    summary = bench.summary()
    result: dict[str, Any] = {
        "benchmark": "build", "profile": profile.name, "engine": engine,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "seconds": time.time() - started, "machine": machine(base), "versions": versions(),
        "settings": {**asdict(profile), "fixture": asdict(profile.fixture),
                     "fixture_text": profile.fixture.describe(), "scenarios": list(scenarios),
                     "variant": variant_text(profile)},
        "facts": bench.facts, "jobs": [asdict(j) for j in bench.jobs], **summary,
        "notes": bench.notes, "error": error,
    }
    result["machine"]["loadavg_after"] = os.getloadavg()[0]
    result["ok"] = not error and all(j.verified for j in bench.jobs)
    if out is not None:
        for path in build_report.write(result, out, result_name(profile, engine)):
            progress(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.build_bench", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--smoke", action="store_true", help="tiny fixture, one repetition (CI)")
    size.add_argument("--full", action="store_true", help="the real fixture, median of 3 repetitions")
    parser.add_argument("--engine", choices=ENGINES, default="docker", help="build engine (default docker)")
    parser.add_argument("--reps", type=int, help="repetitions (default: 1 smoke, 3 full)")
    parser.add_argument("--scenarios", help=f"comma list out of {', '.join(SCENARIOS)} (cold always runs)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every fixture size by this (e.g. 0.25 for a reduced full run)")
    parser.add_argument("--durations", metavar="deps=S,build=S,assets=S,final=S",
                        help="modelled RUN step durations in seconds")
    parser.add_argument("--tarball-rate", type=float, metavar="MB/s", help="hosted-CI cache bandwidth (100)")
    parser.add_argument("--link-rate", type=float, metavar="Mbit/s", help="link to the remote registry (1000)")
    parser.add_argument("--link-rtt", type=float, metavar="MS", default=0.0,
                        help="round-trip time a delay line adds to that link (default 0: the veth's ~0.05 ms)")
    parser.add_argument("--workdir", type=Path, help="where the run's tmpfs mounts go (default /var/tmp)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                        help="before each job, wait up to this long for other work on the machine to stop")
    parser.add_argument("--keep", action="store_true", help="keep the servers' and builder's logs (in the workdir)")
    args = parser.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    fx = profile.fixture
    if args.scale != 1.0:
        fx = replace(fx, **{k: max(1, int(getattr(fx, k) * args.scale)) for k in
                            ("deps_bytes", "build_text_bytes", "build_binary_bytes", "assets_bytes")})
    if args.durations:
        fx = fx.scaled(**{k: float(v) for k, v in (item.split("=", 1) for item in args.durations.split(","))})
    profile = replace(profile, fixture=fx, reps=args.reps or profile.reps,
                      tarball_rate=args.tarball_rate * MB if args.tarball_rate else profile.tarball_rate,
                      link_rate=int(args.link_rate * 1e6) if args.link_rate else profile.link_rate,
                      link_rtt_ms=args.link_rtt)
    if args.link_rtt < 0:
        raise SystemExit("--link-rtt must be >= 0")
    scenarios = tuple(s.strip() for s in args.scenarios.split(",")) if args.scenarios else SCENARIOS
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    result = run(args.smoke, args.engine, profile=profile, workdir=args.workdir, out=args.out,
                 scenarios=scenarios, keep=args.keep, quiet_wait=args.quiet_wait)
    print(build_report.markdown(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
