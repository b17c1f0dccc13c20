"""The build benchmark's fixture project: a multi-stage Dockerfile that models a real image build.

::

    FROM <busybox-static base> AS tools         the base image plus the generator script
    FROM tools AS deps                          "dependencies": many small source-like files (~150 MB)
    FROM deps AS build                          "build": compiled output from src/ (~60 MB)
    FROM tools AS assets                        "assets": binary files such as images (~20 MB)
    FROM deps AS final                          the runtime image: dependencies + assets + build output
                                                + a small release step

The final stage starts ``FROM deps`` (an interpreted-language service ships its dependencies): Docker Engine's
classic image store can only export *inline* cache, which holds the layers of the final image (mode=min). With
the dependencies in the final image, a changed source file re-runs only the build step and what follows it,
whatever the cache transport; a ``FROM tools`` final stage would make every registry scenario re-run the
dependencies step too, because its result would not be in the cache at all.

Each RUN step's CPU work is modelled by a duration: ``gen.sh SECONDS ...`` writes the step's files and then
sleeps for whatever remains of SECONDS, so the step takes SECONDS in all (more only if writing the files alone
takes longer; the step prints how long that took). The files' content comes from /dev/urandom, so a step that
runs again produces different bytes: an identical image id proves that every step came from the cache.

- ``text`` files: lines of base64 of random bytes mixed with generated boilerplate lines; gzip -6 shrinks them
  to ~41 % (like a mix of source files and minified code).
- ``binary`` files: random bytes (incompressible, like images or already-compressed archives).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

MB = 1_000_000

GEN_SH = r"""#!/bin/sh
# gen.sh SECONDS [KIND DIR BYTES FILE_SIZE]...
# Writes BYTES of KIND files (text or binary) of about FILE_SIZE bytes each under DIR, for each group of four
# arguments, then sleeps for whatever remains of SECONDS (two decimals): the step takes SECONDS in all, which
# stands for the CPU work of a real build step. Content comes from /dev/urandom: a re-run differs.
set -e
cs() { read -r up _ < /proc/uptime; echo "${up%.*}${up#*.}"; }
start=$(cs)
seconds=$1
want=$(echo "$seconds" | sed 's/\.//; s/^0*//')
want=${want:-0}
shift
written=0
while [ $# -ge 4 ]; do
  kind=$1 dir=$2 bytes=$3 fsize=$4
  shift 4
  mkdir -p "$dir"
  case $kind in
  text)
    head -c $((bytes / 2 + 65536)) /dev/urandom | busybox base64 -w 1024 | busybox awk -v dir="$dir" -v bytes="$bytes" \
      -v fsize="$fsize" -v per=40 '
      function next_file() {
        if (n % per == 0) system("mkdir -p " dir "/pkg" int(n / per))
        f = sprintf("%s/pkg%d/m%05d.js", dir, int(n / per), n); fb = 0
      }
      BEGIN {
        for (i = 0; i < 16; i++)
          bp = bp sprintf("  module.exports.m%d = require(\"./lib/mod%d\"); // generated\n", i * 37, i * 13)
        n = 0; total = 0; next_file()
      }
      {
        rec = $0 "\n" bp "// " NR
        print rec > f
        fb += length(rec) + 1; total += length(rec) + 1
        if (total >= bytes) exit
        if (fb >= fsize) { close(f); n++; next_file() }
      }'
    ;;
  binary)
    n=0 left=$bytes
    while [ "$left" -gt 0 ]; do
      size=$fsize
      [ "$size" -le "$left" ] || size=$left
      head -c "$size" /dev/urandom > "$dir/$(printf 'f%05d.bin' "$n")"
      left=$((left - size)) n=$((n + 1))
    done
    ;;
  *) echo "gen.sh: unknown kind $kind" >&2; exit 2 ;;
  esac
  written=$((written + bytes))
done
took=$(($(cs) - start))
left=$((want - took))
echo "gen.sh: wrote $written bytes in $((took / 100)).$(printf %02d $((took % 100)))s (modelled step: ${seconds}s)"
if [ "$left" -gt 0 ]; then sleep "$((left / 100)).$(printf %02d $((left % 100)))"; fi
"""


@dataclass(frozen=True)
class Fixture:
    """Sizes (bytes) and modelled step durations (seconds) of the fixture project."""

    deps_bytes: int = 150 * MB
    deps_file_size: int = 24_000
    build_text_bytes: int = 30 * MB
    build_binary_bytes: int = 30 * MB
    assets_bytes: int = 20 * MB
    assets_file_size: int = 64_000
    src_files: int = 200
    deps_seconds: float = 20.0
    build_seconds: float = 15.0
    assets_seconds: float = 6.0
    final_seconds: float = 1.0

    @property
    def total_bytes(self) -> int:
        return self.deps_bytes + self.build_text_bytes + self.build_binary_bytes + self.assets_bytes

    def scaled(self, **durations: float) -> Fixture:
        return replace(self, **{f"{k}_seconds": v for k, v in durations.items()})

    def describe(self) -> str:
        return (f"deps {self.deps_bytes / MB:.0f} MB in ~{self.deps_bytes // self.deps_file_size} files, "
                f"build {(self.build_text_bytes + self.build_binary_bytes) / MB:.0f} MB, assets "
                f"{self.assets_bytes / MB:.0f} MB; steps deps {self.deps_seconds:g}s, build "
                f"{self.build_seconds:g}s, assets {self.assets_seconds:g}s, final {self.final_seconds:g}s")


FULL = Fixture()
SMOKE = Fixture(deps_bytes=6 * MB, deps_file_size=16_000, build_text_bytes=1 * MB, build_binary_bytes=1 * MB,
                assets_bytes=1 * MB, assets_file_size=32_000, src_files=20, deps_seconds=0.5, build_seconds=0.5,
                assets_seconds=0.2, final_seconds=0.1)

#: Cacheable steps (stage, instruction) in Dockerfile order, and those a changed file in src/ re-runs.
STEPS: tuple[tuple[str, str], ...] = (
    ("tools", "COPY"), ("deps", "COPY"), ("deps", "RUN"), ("build", "COPY"), ("build", "RUN"),
    ("assets", "COPY"), ("assets", "RUN"), ("final", "COPY"), ("final", "COPY"), ("final", "RUN"),
)
CHANGED_STEPS: tuple[tuple[str, str], ...] = (("build", "COPY"), ("build", "RUN"), ("final", "COPY"),
                                              ("final", "RUN"))
CHANGED_FILE = "src/module000.py"
#: The final image's layers: base, gen.sh, deps.lock, deps, assets, build output, release. A changed source
#: file keeps the first five.
UNCHANGED_LAYERS = 5


def dockerfile(base: str, fx: Fixture) -> str:
    """The fixture's Dockerfile on ``base`` (durations and sizes are literal, so they are part of cache keys)."""
    build_text = f"text /out/app/lib {fx.build_text_bytes} 1000000"
    build_bin = f"binary /out/app/bin {fx.build_binary_bytes} 10000000"
    return (
        f"FROM {base} AS tools\n"
        "COPY gen.sh /opt/gen.sh\n"
        "\n"
        "FROM tools AS deps\n"
        "COPY deps.lock /opt/deps.lock\n"
        f"RUN sh /opt/gen.sh {fx.deps_seconds:.2f} text /deps {fx.deps_bytes} {fx.deps_file_size}\n"
        "\n"
        "FROM deps AS build\n"
        "COPY src/ /src/\n"
        f"RUN sh /opt/gen.sh {fx.build_seconds:.2f} {build_text} {build_bin} && sha256sum /src/* > /out/app/SOURCES\n"
        "\n"
        "FROM tools AS assets\n"
        "COPY assets/ /assets-src/\n"
        f"RUN sh /opt/gen.sh {fx.assets_seconds:.2f} binary /out/assets {fx.assets_bytes} {fx.assets_file_size}\n"
        "\n"
        "FROM deps AS final\n"
        "COPY --from=assets /out/assets /app/assets\n"
        "COPY --from=build /out/app /app/bin\n"
        f"RUN sh /opt/gen.sh {fx.final_seconds:.2f} binary /app/release 4096 4096"
        " && find /app -type f | wc -l > /app/FILES\n"
        'CMD ["/bin/sh"]\n'
    )


def write_context(directory: Path, base: str, fx: Fixture, nonce: str) -> Path:
    """Write the build context (Dockerfile, gen.sh, deps.lock, src/, assets/) into ``directory`` (replaced).

    ``nonce`` goes into deps.lock, so no cache from another run (or repetition) can satisfy any step.
    """
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "src").mkdir(parents=True)
    (directory / "assets").mkdir()
    (directory / "Dockerfile").write_text(dockerfile(base, fx))
    (directory / "gen.sh").write_text(GEN_SH)
    (directory / "deps.lock").write_text(f"# lockfile of the fixture project\nnonce = {nonce}\n"
                                         + "".join(f"package-{i} = 1.{i % 7}.{i % 13}\n" for i in range(300)))
    for i in range(fx.src_files):
        body = "".join(f"def function_{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(40))
        (directory / "src" / f"module{i:03d}.py").write_text(f"# module {i}\n{body}")
    for i in range(20):
        (directory / "assets" / f"style{i:02d}.css").write_text("".join(f".c{i}-{j} {{ margin: {j}px; }}\n"
                                                                        for j in range(200)))
    return directory


def change_source(directory: Path, generation: int) -> None:
    """Edit one source file (the "one changed source file" case); ``generation`` makes each edit distinct."""
    path = Path(directory) / CHANGED_FILE
    text = path.read_text().split("\n# edit ")[0]
    path.write_text(f"{text}\n# edit {generation}\n")
