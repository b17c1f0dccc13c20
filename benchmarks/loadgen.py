"""Request-rate load generators: ``wrk`` (GET and PUT, Lua-scripted) and ApacheBench ``ab -i`` for HEAD.

wrk 4.1 cannot measure HEAD against a registry: its parser only hooks ``on_message_complete``, so after a HEAD
response carrying ``Content-Length: N`` (which the spec requires for blob HEAD) it waits for N body bytes that
never come, and completes 0 requests whatever ``wrk.method`` says. ``ab -i`` knows HEAD has no body.
Both are single-threaded C clients; each result carries the client's own CPU use to show it is not the limit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

AB = shutil.which("ab") or "/usr/bin/ab"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


class LoadError(RuntimeError):
    """The load generator failed or saw responses other than the ones the benchmark expects."""


@dataclass
class RateResult:
    tool: str
    requests: int
    seconds: float
    rps: float
    error_status: int  # responses with status >= 400 (wrk) / non-2xx (ab)
    socket_errors: int
    latency_ms: float  # mean

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def check(self, *, expect_errors: bool) -> RateResult:
        """Every response must be a success (or, for lookups of missing content, every one a 404)."""
        if self.requests == 0:
            raise LoadError(f"{self.tool} completed no request")
        if self.socket_errors:
            raise LoadError(f"{self.tool}: {self.socket_errors} socket errors")
        wanted = self.requests if expect_errors else 0
        if self.error_status != wanted:
            raise LoadError(f"{self.tool}: {self.error_status} error responses out of {self.requests}, "
                            f"expected {wanted}")
        return self


def _run(cmd: list[str], timeout: float) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise LoadError(f"{' '.join(cmd[:6])}... exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def _field(pattern: str, text: str, default: float | None = None) -> float:
    m = re.search(pattern, text, re.MULTILINE)
    if m is None:
        if default is None:
            raise LoadError(f"cannot find {pattern!r} in:\n{text[-2000:]}")
        return default
    return float(m.group(1))


def ab_head(url: str, concurrency: int, seconds: int) -> RateResult:
    """HEAD ``url`` with keep-alive at ``concurrency`` for ``seconds`` (ab -i -k)."""
    # -t alone caps the run at 50000 requests; -n after it lifts the cap (ab preallocates 48 bytes a request)
    cmd = [AB, "-i", "-k", "-q", "-r", "-c", str(concurrency), "-t", str(seconds),
           "-n", str(200_000 * seconds), url]
    out = _run(cmd, seconds + 60)
    requests = int(_field(r"^Complete requests:\s+(\d+)", out))
    failed = int(_field(r"^Failed requests:\s+(\d+)", out, 0))
    return RateResult(
        tool="ab -i -k", requests=requests, seconds=_field(r"^Time taken for tests:\s+([\d.]+)", out),
        rps=_field(r"^Requests per second:\s+([\d.]+)", out),
        error_status=int(_field(r"^Non-2xx responses:\s+(\d+)", out, 0)), socket_errors=failed,
        latency_ms=_field(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)$", out))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(url: str, concurrency: int, seconds: int, *, script: Path | None = None,
        headers: dict[str, str] | None = None) -> RateResult:
    """wrk with one thread (one core is plenty for it here) and ``concurrency`` connections."""
    cmd = [WRK, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    out = _run(cmd, seconds + 60)
    requests = int(_field(r"^\s+(\d+) requests in", out))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in m.groups()) if m else 0
    lat = re.search(r"^\s+Latency\s+([\d.]+)(us|ms|s|m)\b", out, re.MULTILINE)
    latency = float(lat.group(1)) * _UNITS[lat.group(2)] if lat else 0.0
    seconds_run = _field(r"requests in ([\d.]+)s,", out, float(seconds))
    return RateResult(tool="wrk", requests=requests, seconds=seconds_run,
                      rps=_field(r"^Requests/sec:\s+([\d.]+)", out),
                      error_status=int(_field(r"Non-2xx or 3xx responses:\s+(\d+)", out, 0)),
                      socket_errors=socket_errors, latency_ms=round(latency, 3))


def put_manifest_script(path: Path, repo: str, template: bytes, marker: str, media_type: str,
                        tags: int = 50) -> Path:
    """A wrk Lua script that PUTs ``template`` with ``marker`` replaced by a per-request nine-digit counter
    (so every PUT is a new manifest, as on a re-export), cycling over ``tags`` tags."""
    before, after = template.decode().split(marker)
    for text in (before, after):
        if "]==]" in text:
            raise ValueError("manifest text would end the Lua long string")
    path.write_text(
        'wrk.method = "PUT"\n'
        f'wrk.headers["Content-Type"] = "{media_type}"\n'
        f"local before = [==[{before}]==]\n"
        f"local after = [==[{after}]==]\n"
        "local n = 0\n"
        "function request()\n"
        "  n = n + 1\n"
        f'  local path = "/v2/{repo}/manifests/t" .. (n % {tags})\n'
        '  return wrk.format(nil, path, nil, before .. string.format("%09d", n) .. after)\n'
        "end\n")
    return path
