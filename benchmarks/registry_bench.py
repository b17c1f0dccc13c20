"""The registry micro-benchmark: cachesvc and CNCF distribution side by side in one run, data under one parent
directory (same disk), each figure measured on both with the order alternating between figures and between
repetitions (the disk is ext4 with ``discard``: whichever server writes first after a large delete would
otherwise pay for it alone). Physical limits are measured in the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks import limits as limits_mod
from benchmarks import loadgen, regclient, workloads
from benchmarks.content import (
    NONCE_MARK,
    Blob,
    DataPool,
    bytes_blob,
    cache_blobs,
    cache_config,
    cache_manifest,
    spread_sizes,
)
from benchmarks.figures import PEER, SUBJECT, Figure
from benchmarks.httpclient import Connection, HttpError
from benchmarks.procstat import CpuMeter, RssSampler
from benchmarks.profiles import MiB, Profile
from tests.support.servers import Cachesvc, Distribution, ServerProcess

SECTIONS = ("head", "manifest", "push", "pull", "cache")
TARGETS = {"head": 5.0, "manifest_get": 5.0, "pull": 1.5, "push": 1.5, "export": 1.3, "import": 1.1}
RSS_LIMIT_MIB = 150.0
MANIFEST_REPO = "bench/cache-manifest"
PULL_REPO = "bench/pull"
MISSING = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()

Progress = Callable[[str], None]


def size_text(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n / MiB:.1f} MiB"


class RegistryBench:
    """Starts both registries, runs the selected sections, and keeps every figure."""

    def __init__(self, profile: Profile, workdir: Path, progress: Progress, *,
                 profile_dir: Path | None = None) -> None:
        self.p = profile
        self.workdir = workdir
        self.progress = progress
        self.profile_dir = profile_dir
        self.servers: dict[str, ServerProcess] = {
            SUBJECT: Cachesvc(workdir / "cachesvc"), PEER: Distribution(workdir / "distribution")}
        self.figures: list[Figure] = []
        self.limits: dict[str, limits_mod.Limit] = {}
        self.rss_sections: dict[str, dict[str, int]] = {}
        self.notes: list[str] = []
        self._flip = False
        self.sampler: RssSampler | None = None

    # -- plumbing -----------------------------------------------------------------------------------------
    def url(self, server: str) -> str:
        return self.servers[server].url

    @property
    def pids(self) -> dict[str, int]:
        return {name: s.proc.pid for name, s in self.servers.items() if s.proc is not None}

    def next_order(self) -> list[str]:
        order = [PEER, SUBJECT] if self._flip else [SUBJECT, PEER]
        self._flip = not self._flip
        return order

    def figure(self, **kw: object) -> Figure:
        fig = Figure(**kw)  # type: ignore[arg-type]
        self.figures.append(fig)
        return fig

    def measure(self, fig: Figure, fn: Callable[[str], float], *, reps: int = 1,
                warmup: Callable[[str], object] | None = None, summary: bool = True) -> Figure:
        """``fn(server)`` on both servers, ``reps`` times, alternating which goes first; ``summary`` prints the
        figure so far (off for all but the last of repetitions measured one call each)."""
        for _ in range(reps):
            # alternate between figures, and between the repetitions of one figure
            base = fig.order[0] if fig.order else self.next_order()
            order = base if len(fig.order) % 2 == 0 else base[::-1]
            fig.order.append(order)
            for server in order:
                if warmup is not None:
                    warmup(server)
                if self.sampler is not None:
                    self.sampler.section = fig.section
                with self._profiled(fig, server), CpuMeter(self.pids) as meter:
                    value = fn(server)
                fig.add(server, value)
                fig.cores[server] = meter.cores
                c = meter.cores
                self.progress(f"  {fig.label} [{server}] {value:,.1f} {fig.unit}  (cores: cachesvc "
                              f"{c.get(SUBJECT, 0):.2f}, distribution {c.get(PEER, 0):.2f}, client "
                              f"{c['client']:.2f}, other {c['other']:.2f})")
        if not summary:
            return fig
        ratio = fig.ratio
        self.progress(f"{fig.label}: cachesvc {fig.value(SUBJECT):,.1f} / distribution "
                      f"{fig.value(PEER):,.1f} {fig.unit}" + (f" = {ratio:.2f}x" if ratio else "")
                      + (f" (target {fig.target_text()})" if fig.target or fig.max_value else ""))
        return fig

    @contextlib.contextmanager
    def _profiled(self, fig: Figure, server: str) -> Iterator[None]:
        """With ``--profile``: py-spy samples cachesvc for the measurement (collapsed stacks to a file)."""
        if self.profile_dir is None or server != SUBJECT:
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{fig.key}-{len(fig.samples.get(SUBJECT, [])) + 1}.txt"
        spy = Path(sys.executable).with_name("py-spy")
        proc = subprocess.Popen([str(spy), "record", "--pid", str(self.pids[SUBJECT]), "--format", "raw",
                                 "--rate", "200", "--nonblocking", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let it attach
        try:
            yield
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            fig.extra["profile"] = str(out)

    # -- the run ------------------------------------------------------------------------------------------
    def run(self, sections: tuple[str, ...]) -> None:
        p = self.p
        pool_size = max(p.push_size, *p.pull_sizes, 32 * MiB)
        self.progress(f"generating {size_text(pool_size)} of random data")
        self.pool = DataPool(pool_size)
        self.manifest_set()
        self.progress("measuring the machine's limits")
        self.limits = limits_mod.measure(p, self.workdir, self.pool.data, len(self.m_manifest), self.progress)
        self.progress("starting cachesvc and distribution")
        for server in self.next_order():
            self.servers[server].start()
        self.sampler = RssSampler(self.pids)
        self.sampler.start()
        try:
            self.prepare()
            for section in sections:
                self.progress(f"== {section}")
                getattr(self, f"bench_{section}")()
            self.bench_memory()
            self.progress("measuring the machine's limits again (each limit keeps the better of the two)")
            again = limits_mod.measure(p, self.workdir, self.pool.data, len(self.m_manifest), self.progress)
            self.limits = limits_mod.merge(self.limits, again)
            self.apply_limits()
        finally:
            if self.sampler.is_alive():
                self.sampler.stop()
            for server in self.servers.values():
                server.stop()

    def manifest_set(self) -> None:
        """The 20-layer cache export the manifest figures use (sizes like the real fixture's ~21 MB)."""
        total = min(20 * MiB, len(self.pool.data) // 2)
        self.m_layers = cache_blobs(self.pool, "manifest-set", spread_sizes(20, total))
        self.m_config = bytes_blob(cache_config(self.m_layers))
        self.m_manifest = cache_manifest(self.m_config, self.m_layers)

    def prepare(self) -> None:
        """Warm both servers and give them the same content: the 20-layer cache under a tag, pull blobs."""
        self.pull_blobs = {size: self.pool.blob(f"pull/{size}", size) for size in self.p.pull_sizes}
        for server in self.next_order():
            url = self.url(server)
            t0 = time.perf_counter()
            workloads.run_parallel(url, 4, [*self.m_layers, self.m_config],
                                   lambda conn, b: regclient.push_monolithic(conn, MANIFEST_REPO, b.digest,
                                                                             b.pieces()))
            with Connection(url) as conn:
                digest = regclient.put_manifest(conn, MANIFEST_REPO, "main", self.m_manifest)
                body = regclient.get_manifest(conn, MANIFEST_REPO, "main")
                if body != self.m_manifest or digest != "sha256:" + hashlib.sha256(body).hexdigest():
                    raise HttpError(f"{server}: the manifest did not round-trip")
                for blob in self.pull_blobs.values():
                    regclient.push_monolithic(conn, PULL_REPO, blob.digest, blob.pieces())
                    regclient.get_blob(conn, PULL_REPO, blob.digest, verify=True)
            self.progress(f"{server}: loaded the test content in {time.perf_counter() - t0:.1f}s")

    def limit(self, *keys: str) -> tuple[str | None, float | None]:
        """The tightest of the named limits (label, value), for a figure that needs all those resources."""
        found = [self.limits[k] for k in keys if k in self.limits]
        if not found:
            return None, None
        tight = min(found, key=lambda lim: lim.value)
        return tight.label, tight.value

    def apply_limits(self) -> None:
        """Give every figure the tightest of the limits it needs (as a least time for timed figures)."""
        for fig in self.figures:
            if not fig.limit_keys:
                continue
            fig.limit_label, rate = self.limit(*fig.limit_keys)
            if rate and fig.limit_bytes is not None:
                fig.limit_value = fig.limit_bytes / rate / 1e6
            else:
                fig.limit_value = rate

    def seconds(self) -> int:
        return max(1, round(self.p.rate_seconds))

    def warmup_ab(self, path: str, c: int) -> Callable[[str], object] | None:
        if self.p.warmup_seconds <= 0:
            return None
        return lambda server: loadgen.ab_head(self.url(server) + path, c, self.p.warmup_seconds)

    # -- sections -----------------------------------------------------------------------------------------
    def bench_head(self) -> None:
        present = self.m_layers[len(self.m_layers) // 2].digest
        for state, digest in (("present", present), ("missing", MISSING)):
            path = f"/v2/{MANIFEST_REPO}/blobs/{digest}"
            for c in self.p.concurrencies:
                fig = self.figure(key=f"head_{state}_c{c}", section="HEAD blob", label=f"HEAD blob {state}, c={c}",
                                  unit="req/s", target=TARGETS["head"], limit_keys=(f"ceiling_head_c{c}",),
                                  limit_applies_to=(SUBJECT,))

                def run(server: str, path: str = path, c: int = c, fig: Figure = fig,
                        missing: bool = state == "missing") -> float:
                    result = loadgen.ab_head(self.url(server) + path, c, self.seconds())
                    fig.extra[server] = result.as_dict()
                    return result.check(expect_errors=missing).rps

                self.measure(fig, run, warmup=self.warmup_ab(path, c))

    def bench_manifest(self) -> None:
        path = f"/v2/{MANIFEST_REPO}/manifests/main"
        accept = {"Accept": regclient.MANIFEST_ACCEPT}
        for c in self.p.concurrencies:
            fig = self.figure(key=f"manifest_get_c{c}", section="manifest",
                              label=f"GET manifest by tag (20 layers, {len(self.m_manifest)} B), c={c}",
                              unit="req/s", target=TARGETS["manifest_get"], limit_keys=(f"ceiling_get_c{c}",),
                              limit_applies_to=(SUBJECT,))

            def run(server: str, c: int = c, fig: Figure = fig) -> float:
                result = loadgen.wrk(self.url(server) + path, c, self.seconds(), headers=accept)
                fig.extra[server] = result.as_dict()
                return result.check(expect_errors=False).rps

            warm = None
            if self.p.warmup_seconds > 0:
                def warm(server: str, c: int = c) -> object:
                    return loadgen.wrk(self.url(server) + path, c, self.p.warmup_seconds, headers=accept)
            self.measure(fig, run, warmup=warm)
        template = cache_manifest(self.m_config, self.m_layers, NONCE_MARK)
        script = loadgen.put_manifest_script(self.workdir / "put-manifest.lua", MANIFEST_REPO, template,
                                             NONCE_MARK, regclient.OCI_MANIFEST)
        for c in self.p.put_concurrencies:
            fig = self.figure(key=f"manifest_put_c{c}", section="manifest",
                              label=f"PUT manifest (new digest each, 50 tags), c={c}", unit="req/s")

            def put(server: str, c: int = c, fig: Figure = fig) -> float:
                result = loadgen.wrk(self.url(server), c, self.seconds(), script=script)
                fig.extra[server] = result.as_dict()
                return result.check(expect_errors=False).rps

            self.measure(fig, put)

    def bench_push(self) -> None:
        p = self.p
        for mode, chunk in (("monolithic", None), ("chunked", p.chunk_size)):
            how = "POST + one PUT" if chunk is None else f"POST + {size_text(chunk)} PATCHes + PUT"
            fig = self.figure(key=f"push_{mode}", section="blob push",
                              label=f"blob push {size_text(p.push_size)}, {mode} ({how})", unit="MB/s",
                              target=TARGETS["push"], limit_keys=("loopback_copy_1", "sha256_1", "disk_write"))
            for rep in range(p.push_reps):
                blob = self.pool.blob(f"push/{mode}/{rep}", p.push_size)
                data = blob.contiguous()

                def run(server: str, blob: Blob = blob, data: memoryview = data, chunk: int | None = chunk,
                        fig: Figure = fig) -> float:
                    took, tail = workloads.timed_push(self.url(server), "bench/push", blob.digest, data, chunk)
                    tails = fig.extra.setdefault(f"{server}_tail_s", [])
                    assert isinstance(tails, list)
                    tails.append(round(tail, 3))
                    return p.push_size / took / 1e6

                self.measure(fig, run, summary=rep == p.push_reps - 1)
                del data
            tails = {server: statistics.median(fig.extra[f"{server}_tail_s"]) for server in (SUBJECT, PEER)}
            self.notes.append(f"{fig.label}: from the last byte sent to the 201 (verification, fsync, index) took "
                              f"{tails[SUBJECT]:.3f} s on cachesvc and {tails[PEER]:.3f} s on distribution "
                              "(median).")

    def bench_pull(self) -> None:
        p = self.p
        for size, blob in self.pull_blobs.items():
            for streams in p.pull_streams:
                fig = self.figure(key=f"pull_{size // MiB}m_s{streams}", section="blob pull",
                                  label=f"blob pull {size_text(size)}, {streams} stream{'s' * (streams > 1)}",
                                  unit="MB/s", target=TARGETS["pull"],
                                  limit_keys=(f"loopback_sendfile_{1 if streams == 1 else 8}",))

                def run(server: str, blob: Blob = blob, streams: int = streams, fig: Figure = fig) -> float:
                    rate, n = workloads.pull_rate(self.url(server), PULL_REPO, blob.digest, blob.size, streams,
                                                  p.pull_seconds)
                    fig.extra[f"{server}_requests"] = n
                    return rate

                self.measure(fig, run)
        largest = self.pull_blobs[max(self.pull_blobs)]
        for streams in p.pull_streams:
            fig = self.figure(key=f"range_s{streams}", section="blob pull",
                              label=f"Range GET {size_text(p.range_size)} slices of {size_text(largest.size)}, "
                                    f"{streams} stream{'s' * (streams > 1)}",
                              unit="MB/s", target=TARGETS["pull"],
                              limit_keys=(f"loopback_sendfile_{1 if streams == 1 else 8}",))

            def ranged(server: str, streams: int = streams, fig: Figure = fig) -> float:
                rate, n = workloads.pull_rate(self.url(server), PULL_REPO, largest.digest, largest.size, streams,
                                              p.pull_seconds, range_size=p.range_size)
                fig.extra[f"{server}_requests"] = n
                return rate

            self.measure(fig, ranged)
        fig = self.figure(key="pull_curl", section="blob pull",
                          label=f"blob pull {size_text(largest.size)} by curl -o /dev/null (client check)",
                          unit="MB/s", limit_keys=("loopback_sendfile_1",))
        self.measure(fig, lambda server: workloads.curl_rate(self.url(server), PULL_REPO, largest.digest), reps=2)

    def bench_cache(self) -> None:
        p = self.p
        sizes = spread_sizes(p.cache_blobs, p.cache_total)
        total = sum(sizes)
        what = f"{p.cache_blobs} blobs, {size_text(total)}, concurrency {p.cache_concurrency}"
        export = self.figure(key="cache_export", section="cache export/import", label=f"cache export ({what})",
                             unit="s", higher_is_better=False, target=TARGETS["export"],
                             limit_keys=("loopback_copy_8", "sha256_all", "disk_write"), limit_bytes=total)
        imp = self.figure(key="cache_import", section="cache export/import", label=f"cache import ({what})",
                          unit="s", higher_is_better=False, target=TARGETS["import"],
                          limit_keys=("loopback_sendfile_8", "sha256_all"), limit_bytes=total)
        for rep in range(p.cache_reps):
            layers = cache_blobs(self.pool, f"cache/{rep}", sizes, seed=100 + rep)
            config = bytes_blob(cache_config(layers))
            manifest = cache_manifest(config, layers)
            tag = f"main-{rep}"

            def run_export(server: str, layers: list[Blob] = layers, config: Blob = config,
                           manifest: bytes = manifest, tag: str = tag) -> float:
                return workloads.cache_export(self.url(server), "cache/app", tag, config, layers, manifest,
                                              p.cache_concurrency)

            def run_import(server: str, tag: str = tag, layers: list[Blob] = layers, config: Blob = config) -> float:
                took, n, nbytes = workloads.cache_import(self.url(server), "cache/app", tag, p.cache_concurrency)
                if n != len(layers) + 1 or nbytes != total + config.size:
                    raise HttpError(f"{server}: imported {n} blobs / {nbytes} bytes")
                return took

            last = rep == p.cache_reps - 1
            self.measure(export, run_export, summary=last)
            self.measure(imp, run_import, summary=last)
        export.extra["bytes"] = imp.extra["bytes"] = total
        export.extra["blob_sizes"] = {"min": min(sizes), "max": max(sizes), "median": sorted(sizes)[len(sizes) // 2]}

    def bench_memory(self) -> None:
        assert self.sampler is not None
        hwm = self.sampler.stop()
        self.rss_sections = self.sampler.by_section
        fig = self.figure(key="rss_peak", section="memory", label="server RSS peak over the run (VmHWM)",
                          unit="MiB", higher_is_better=False, max_value=RSS_LIMIT_MIB)
        for server, value in hwm.items():
            fig.add(server, round(value / MiB, 1))
        fig.extra["by_section_mib"] = {sec: {s: round(v / MiB, 1) for s, v in peaks.items()}
                                       for sec, peaks in self.rss_sections.items()}
        self.progress(f"RSS peak: cachesvc {fig.value(SUBJECT)} MiB, distribution {fig.value(PEER)} MiB")
