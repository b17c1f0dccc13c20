"""The build benchmark's pieces that need no engine: progress parsers, the fixture generator, pacing, verdicts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks import build_bench
from benchmarks.build_env import buildah_steps, parse_buildkit_plain
from benchmarks.fixture_project import (
    CHANGED_STEPS,
    GEN_SH,
    SMOKE,
    STEPS,
    change_source,
    dockerfile,
    write_context,
)
from benchmarks.netns import tbf_args

DOCKER_WARM = """\
#1 [internal] load build definition from Dockerfile
#1 DONE 0.0s
#4 importing cache manifest from 127.0.0.1:5000/cache/bench/app:main
#4 DONE 0.0s
#7 [tools 2/2] COPY gen.sh /opt/gen.sh
#7 CACHED
#8 [deps 1/2] COPY deps.lock /opt/deps.lock
#8 CACHED
#9 [deps 2/2] RUN sh /opt/gen.sh 1.00 text /deps 20000000 24000
#9 CACHED
#13 [build 1/2] COPY src/ /src/
#13 CACHED
#16 [final 3/3] RUN sh /opt/gen.sh 0.20 binary /app/release 4096 4096
#16 pulling sha256:cda97aa6954533cd5d57995fb249d217cbcf8a8c091dd878eb3f138737009aa3
#16 pulling sha256:cda97aa6954533cd5d57995fb249d217cbcf8a8c091dd878eb3f138737009aa3 0.3s done
#16 CACHED
#17 exporting to image
#17 DONE 0.0s
"""

BUILDAH_COLD_INTERLEAVED = """\
[1/5] STEP 1/2: FROM 127.0.0.1:5003/base/busybox:latest AS tools
[1/5] STEP 2/2: COPY gen.sh /opt/gen.sh
--> Pushing cache 127.0.0.1:5002/cache/bench/app-layers:{k1}
--> 79bca304742
[5/5] STEP 1/5: FROM 72948d1691c208a8cd8e9719544732f7fa8952fe130ffa7405107db5ff60f7f9 AS final
[5/5] STEP 2/5: COPY --from=assets /out/assets /app/assets
--> Using cache 9b64d005cb01923dbb23b16795c1aedada4827eab110c2df35ce8175756a5956
--> 9b64d005cb0
[5/5] STEP 3/5: COPY --from=build /out/app /app/bin
[3/5] STEP 1/3: FROM 72948d1691c208a8cd8e9719544732f7fa8952fe130ffa7405107db5ff60f7f9 AS build
[3/5] STEP 2/3: COPY src/ /src/
--> Using cache 9b55518a6edd3af8677e8f7976a3f8167c212c1fd39fcb772b50256dfb4fa24a
--> 9b55518a6ed
[3/5] STEP 3/3: RUN sh /opt/gen.sh 1.00 text /out/app/lib 3000000 1000000
gen.sh: wrote 3000000 bytes in 0.07s (modelled step: 1.00s)
--> Pushing cache 127.0.0.1:5002/cache/bench/app-layers:{k2}
--> 16242c9f5d8
--> Pushing cache 127.0.0.1:5002/cache/bench/app-layers:{k3}
--> 304b00db1e2
[5/5] STEP 4/5: RUN sh /opt/gen.sh 0.20 binary /app/release 4096 4096
--> 7f7f27d6b9c
[5/5] STEP 5/5: CMD ["/bin/sh"]
[5/5] COMMIT localhost/bench/app:main
--> ec3b90c56b9
""".format(k1="1" * 64, k2="2" * 64, k3="3" * 64)


def test_buildkit_plain_steps_and_phases() -> None:
    lines = [(i * 0.1, line) for i, line in enumerate(DOCKER_WARM.splitlines())]
    progress = parse_buildkit_plain(lines)
    assert ("deps", "RUN", True) in progress.steps
    assert all(cached for _, _, cached in progress.steps) and len(progress.steps) == 5
    phases = progress.phases(2.0)
    assert phases["resolve"] == pytest.approx(0.3)
    assert phases["pull"] == pytest.approx(1.4 - 0.3)  # line 14: the last "pulling ... done"
    assert phases["unpack"] == pytest.approx(2.0 - 1.4)


def test_buildah_steps_follow_interleaved_stages() -> None:
    steps = buildah_steps(BUILDAH_COLD_INTERLEAVED)
    assert steps == [("tools", "COPY", False), ("final", "COPY", True), ("final", "COPY", False),
                     ("build", "COPY", True), ("build", "RUN", False), ("final", "RUN", False)]


def test_expected_steps_match_the_dockerfile() -> None:
    text = dockerfile("base", SMOKE)
    stage, found = "", []
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "FROM":
            stage = words[-1]
        elif words and words[0] in ("RUN", "COPY"):
            found.append((stage, words[0]))
    assert tuple(found) == STEPS
    warm = build_bench.expected_cached("warm")
    changed = build_bench.expected_cached("changed")
    assert all(c for _, _, c in warm)
    assert sorted((s, i) for s, i, c in changed if not c) == sorted(CHANGED_STEPS)
    assert build_bench.same_steps(list(reversed(changed)), changed)
    assert not build_bench.same_steps(warm, changed)


def test_context_and_changed_file(tmp_path: Path) -> None:
    ctx = write_context(tmp_path / "ctx", "127.0.0.1:5003/base/busybox:latest", SMOKE, "n1")
    assert "nonce = n1" in (ctx / "deps.lock").read_text()
    assert len(list((ctx / "src").iterdir())) == SMOKE.src_files
    before = {p.name: p.read_text() for p in (ctx / "src").iterdir()}
    change_source(ctx, 1)
    change_source(ctx, 2)
    after = {p.name: p.read_text() for p in (ctx / "src").iterdir()}
    assert [n for n in before if before[n] != after[n]] == ["module000.py"]
    assert after["module000.py"].count("# edit") == 1


@pytest.mark.skipif(not shutil.which("busybox"), reason="busybox not found: apt-get install busybox-static")
def test_generator_writes_the_sizes_and_takes_the_duration(tmp_path: Path) -> None:
    script = tmp_path / "gen.sh"
    script.write_text(GEN_SH)
    t0 = time.monotonic()
    out = subprocess.run(["busybox", "sh", str(script), "0.60", "text", str(tmp_path / "t"), "300000", "16000",
                          "binary", str(tmp_path / "b"), "100000", "32000"], capture_output=True, text=True,
                         check=True, env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    took = time.monotonic() - t0
    assert "wrote 400000 bytes" in out.stdout
    assert 0.55 <= took < 5
    text_files = list((tmp_path / "t").rglob("*.js"))
    assert len(text_files) >= 300000 // 16000 - 1
    assert 300000 <= sum(p.stat().st_size for p in text_files) < 300000 + 4000
    binary = sorted((tmp_path / "b").iterdir())
    assert [p.stat().st_size for p in binary] == [32000, 32000, 32000, 4000]


def test_throttled_copy_paces(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    seconds = build_bench.throttled_copy(src, tmp_path / "remote" / "dst", rate=10 << 20, chunk=1 << 20)
    assert (tmp_path / "remote" / "dst").read_bytes() == src.read_bytes()
    assert 0.28 <= seconds < 2


def test_tbf_args_scale_with_the_rate() -> None:
    args = tbf_args(1_000_000_000)
    assert args[:3] == ["tbf", "rate", "1000000000bit"]
    assert int(args[args.index("burst") + 1]) >= 64 * 1024
    assert int(tbf_args(10_000_000)[4]) == 64 * 1024


def test_rtt_sweep_pairs_the_jobs_of_each_repetition(tmp_path: Path) -> None:
    from benchmarks import rtt_sweep

    def job(rep: int, scenario: str, total: float) -> dict[str, object]:
        return {"rep": rep, "scenario": scenario, "case": "warm", "total_s": total}

    def row(median: float, totals: list[float]) -> dict[str, object]:
        return {"total_s": median, "totals": totals, "phases": {"pull": 0.5}, "requests": 20, "verified": True,
                "other_cores": 0.0}

    result = {
        "started": "t", "settings": {"link_rtt_ms": 5.0},
        "jobs": [job(0, "remote-registry", 4.0), job(0, "cachesvc", 2.0), job(1, "cachesvc", 4.0),
                 job(1, "remote-registry", 4.4), job(2, "remote-registry", 3.0), job(2, "cachesvc", 2.5),
                 {**job(2, "cachesvc", 9.0), "case": "changed"}],
        "table": {"warm": {"remote-registry": row(4.0, [4.0, 4.4, 3.0]), "cachesvc": row(2.5, [2.0, 4.0, 2.5])}},
    }
    r = rtt_sweep.row(result)
    assert r["rtt_ms"] == 5.0
    assert r["paired"] == [2.0, 1.1, 1.2]
    assert r["paired_median"] == 1.2
    assert r["ratio"] == 4.0 / 2.5
    text = rtt_sweep.markdown([r])
    assert "| 5 ms | 3 | 4.00 | 2.50 | **1.60x** | 1.20x | 2.00, 1.10, 1.20 |" in text
    assert text.splitlines()[6].endswith("| met |")
    paths = rtt_sweep.write([r], tmp_path)
    assert [p.name for p in paths] == ["build-rtt.json", "build-rtt.md"]


def test_cpu_by_process_name_counts_new_reused_and_reaped() -> None:
    from benchmarks.build_report import cpu_text
    from benchmarks.procstat import ProcessCpu, cpu_by_name

    before = {1: ProcessCpu("dockerd", 10.0, 1.0), 2: ProcessCpu("cachesvc", 5.0, 0.0),
              3: ProcessCpu("sh", 1.0, 0.0)}
    after = {1: ProcessCpu("dockerd", 11.5, 3.0),  # 1.5 own + 2.0 of reaped unpigz/untar children
             2: ProcessCpu("cachesvc", 5.05, 0.0),
             3: ProcessCpu("containerd-shim", 0.25, 0.0),  # pid 3 re-used by another program: counts whole
             4: ProcessCpu("docker-registry", 0.5, 0.0)}  # started during the job
    used = cpu_by_name(before, after)
    assert used == {"dockerd": 3.5, "docker-registry": 0.5, "containerd-shim": 0.25, "cachesvc": 0.05}
    assert list(used) == ["dockerd", "docker-registry", "containerd-shim", "cachesvc"]
    assert cpu_text(used, most=2) == "dockerd 3.50, docker-registry 0.50"
    assert cpu_text({}) == "-"
    me = ProcessCpu.read(os.getpid())
    assert me is not None and me.own > 0 and me.comm
    assert ProcessCpu.read(2**22 + 12345) is None  # no such pid
