"""`make bench`: the sidecar against the physical floor of what a grant cannot avoid.

Starts the real `opa` binary and `jit-sidecar serve` as separate processes, as in production
(SQLite state, hash-chained audit log with durability fsync, dev identity; temporary
directory, free ports), and measures in one run:

- the floor parts: B_rpc (p50 of grpc.health Check over the sidecar's socket), B_opa (p50 of
  a raw keep-alive POST of the same input to OPA's decision endpoint), B_sign (median of
  `SigningKey.sign` with the sidecar's key), B_sync (median of the journal's durable write
  for a batch of one: audit append + fsync + the SQLite transaction);
- RequestGrant for a JIT intent and a cached standing intent: p50/p90/p99 at concurrency 1,
  throughput and p99 at concurrency 8 and 32 (separate client processes);
- the baselines of the throughput target: health Check and raw OPA throughput at c=32;
- the sidecar's resident memory with 100k active grants, and `Engine.sweep()` at that size;
- GrantStream (issue 24): B_stream (p50 of an empty message's round trip on an open stream),
  JIT and standing grants over the stream at c=1 (interleaved with the above), 8 and 32
  streams, batches of 8 JIT intents per message (c=1 and 8 streams), and the time from an
  agent process being killed to its grants being inactive (bench/stream_crash.py).

Prints a table with the ratio of each figure to its target and writes
bench/results/latest.json. `--profile DIR` also records py-spy profiles of the sidecar
during extra c=1 runs. Usage: `make bench` or `.venv/bin/python -m bench.run --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import floor, stream_crash  # noqa: E402
from bench.load import LoadPool, Target  # noqa: E402
from tests.harness import OpaServer, SidecarProcess, opa_binary, wait_for  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ROTATE_EVERY = 20
#: Intents per message in the batch figures (a burst the policy decides in one evaluation).
BATCH = 8
SIDECAR_FLAGS = (
    *("--log-level", "info", "--durability", "fsync"),
    *("--max-tasks-per-identity", "100000", "--max-grants-per-task", "1000"),
    # The load clients send no heartbeats; without this their tasks would count as crashed
    # after 15 s and every grant of theirs be revoked mid-run.
    *("--heartbeat-interval", "3600"),
    # 2 cores shared by OPA, the sidecar and up to 32 client processes: a decision can
    # queue behind them for longer than the production default of 250 ms.
    *("--opa-timeout", "2"),
)
ENVOY_SKIPPED = (
    "not run: `go install github.com/open-policy-agent/opa-envoy-plugin/cmd/"
    "opa-envoy-plugin@v1.22.3-envoy` fails here (the Go module proxy answers 403 Forbidden "
    "for that module, list and version alike), and no other source is reachable"
)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import grpc

    opa = subprocess.run(
        [opa_binary(), "version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "opa": opa.split(":", 1)[1].strip(),
        "grpcio": grpc.__version__,
        "loadavg_at_start": os.getloadavg()[0],
    }


class Bench:
    """One run: OPA and the sidecar as processes, the client pool, and the figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.figures: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="jit-bench-"))
        self.opa: OpaServer | None = None
        self.sidecar: SidecarProcess | None = None
        self.pool: LoadPool | None = None

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        a = self.args
        self.pool = LoadPool(max(32, a.fill_concurrency))
        opa_dir = self.workdir / "opa"
        opa_dir.mkdir()
        self.opa = OpaServer(opa_dir, unix_socket=self.workdir / "opa.sock").start()
        self.opa_url = (
            f"unix://{self.workdir / 'opa.sock'}" if a.opa_transport == "unix" else self.opa.url
        )
        self.sidecar = SidecarProcess(self.workdir / "sidecar", self.opa_url, *SIDECAR_FLAGS)
        # Assigned before it starts, so that stop() ends it whatever happens; started with
        # patience: under a load of 20+ on 2 cores, Python alone may take longer than the
        # tests' 20 s to import.
        self.sidecar.start(wait=False)
        wait_for(self.sidecar.ready_to_serve, 180, what="the sidecar to start")
        assert self.sidecar.proc is not None
        self.pid = self.sidecar.proc.pid
        self.socket = str(self.sidecar.socket.resolve())
        self.bodies = floor.opa_bodies(ROTATE_EVERY)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.sidecar is not None:
            with contextlib.suppress(Exception):
                self.sidecar.stop(timeout=30)
            if self.sidecar.proc is not None:
                self.sidecar.kill()
        if self.opa is not None:
            self.opa.stop()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            print(f"kept {self.workdir}", file=sys.stderr)

    def target(self, kind: str, **kw: Any) -> Target:
        return Target(
            kind=kind,
            socket=self.socket,
            opa_url=self.opa_url,
            opa_path="/v1/data/jit/decision",
            opa_bodies=self.bodies,
            rotate_every=kw.pop("rotate_every", ROTATE_EVERY),
            **kw,
        )

    def step(self, what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ runs
    def c1_rounds(self) -> None:
        """The c=1 figures, interleaved: `rounds` rounds of (health, raw OPA, JIT,
        standing, sign, sync), so that a change in background load during the run shifts
        the floor and the RequestGrant figures alike instead of skewing their ratio."""
        assert self.pool is not None
        assert self.opa is not None
        assert self.opa.proc is not None
        a = self.args
        per_round = max(1, a.calls // a.rounds)
        kinds = ("health", "opa", "jit", "standing", "stream", "stream_jit", "stream_standing")
        lat: dict[str, list[float]] = {k: [] for k in kinds}
        cpu = {k: [0.0, 0.0] for k in lat}
        sign = floor.SignProbe(self.sidecar_key)
        sync = floor.SyncProbe(self.workdir / "sync")
        signs: list[float] = []
        syncs: list[float] = []
        try:
            for r in range(a.rounds):
                self.step(f"c=1 round {r + 1}/{a.rounds}: health, OPA, JIT, standing, sign, sync")
                for kind in lat:
                    before = cpu_seconds(self.pid), cpu_seconds(self.opa.proc.pid)
                    warm = 100 if r == 0 else 10
                    result = self.pool.run(
                        self.target(kind), 1, max_calls=per_round, warm_calls=warm
                    )
                    lat[kind] += result.latencies
                    # Includes warm-up and the untimed BeginTask calls: an upper bound.
                    n = per_round + warm
                    cpu[kind][0] += (cpu_seconds(self.pid) - before[0]) / n / a.rounds
                    cpu[kind][1] += (cpu_seconds(self.opa.proc.pid) - before[1]) / n / a.rounds
                signs += sign.samples(max(1, a.sign_calls // a.rounds))
                syncs += sync.samples(max(1, a.sync_calls // a.rounds))
        finally:
            sync.close()
        f = self.figures
        for kind, values in lat.items():
            f[f"{kind}_p50_ms"] = pct(values, 50) * 1e3
            f[f"{kind}_p90_ms"] = pct(values, 90) * 1e3
            f[f"{kind}_p99_ms"] = pct(values, 99) * 1e3
            f[f"{kind}_sidecar_cpu_ms"] = cpu[kind][0] * 1e3
            f[f"{kind}_opa_cpu_ms"] = cpu[kind][1] * 1e3
        f["B_rpc_ms"] = f["health_p50_ms"]
        f["B_stream_ms"] = f["stream_p50_ms"]
        f["B_opa_ms"] = f["opa_p50_ms"]
        f["B_sign_ms"] = pct(signs, 50) * 1e3
        f["B_sync_ms"] = pct(syncs, 50) * 1e3

    def throughput(self, name: str, kind: str, c: int, batch: int = 1) -> None:
        """Calls/s at concurrency c; with `batch` intents per message, grants/s (latency
        stays per message)."""
        assert self.pool is not None
        cpu = cpu_seconds(self.pid)
        r = self.pool.run(
            self.target(kind, batch=batch, rotate_every=max(1, ROTATE_EVERY // batch)),
            c,
            duration=self.args.duration,
            warm_calls=20,
        )
        # Includes warm-up calls; an upper bound.
        self.figures[f"{name}_c{c}_sidecar_cpu_ms"] = (
            (cpu_seconds(self.pid) - cpu) / ((r.calls + 20 * c) * batch) * 1e3
        )
        self.figures[f"{name}_c{c}_per_s"] = r.throughput * batch
        self.figures[f"{name}_c{c}_p50_ms"] = pct(r.latencies, 50) * 1e3
        self.figures[f"{name}_c{c}_p99_ms"] = pct(r.latencies, 99) * 1e3

    def run(self) -> None:
        a = self.args
        f = self.figures
        self.c1_rounds()
        if a.profile:
            self.profile(a.profile)
        for c in (8, 32):
            self.step(f"RequestGrant at c={c}")
            self.throughput("jit", "jit", c)
            self.throughput("standing", "standing", c)
            self.step(f"GrantStream with {c} streams")
            self.throughput("stream_jit", "stream_jit", c)
            self.throughput("stream_standing", "stream_standing", c)
        self.step(f"GrantStream batches of {BATCH} JIT intents, c=1 and c=8")
        assert self.pool is not None
        try:
            r = self.pool.run(
                self.target("stream_jit", batch=BATCH, rotate_every=ROTATE_EVERY // BATCH),
                1,
                max_calls=max(50, a.calls // (4 * BATCH)),
            )
            f["batch_jit_c1_per_grant_ms"] = pct(r.latencies, 50) * 1e3 / BATCH
            self.throughput("batch_jit", "stream_jit", 8, batch=BATCH)
        except RuntimeError as err:
            # An extra figure: a busy machine (OPA past --opa-timeout) must not cost the run.
            self.notes["batch"] = f"batch figures not measured: {err}"
        self.step(f"crash detection through stream close ({a.crash_trials} agents killed)")
        crash = [s * 1e3 for s in stream_crash.measure(Path(self.socket), a.crash_trials)]
        f["crash_p50_ms"] = pct(crash, 50)
        f["crash_p99_ms"] = pct(crash, 99)
        f["crash_max_ms"] = max(crash)
        self.step("baselines at c=32: health Check, raw OPA")
        self.throughput("health", "health", 32)
        self.throughput("opa", "opa", 32)
        if not a.skip_memory:
            self.memory()
            self.step(f"Engine.sweep() with {a.grants} active grants (in-process)")
            sweep = floor.sweep_cost(
                self.workdir / "sweep", self.sidecar_key, self.opa_url, grants=a.grants
            )
            f["sweep_0_due_ms"] = sweep["sweep_0_due_s"] * 1e3
            f["sweep_1k_due_ms"] = sweep["sweep_1k_due_s"] * 1e3
            f["sweep_1k_due_commit_ms"] = sweep["sweep_1k_due_commit_s"] * 1e3
            f["gc_full_ms"] = sweep["gc_full_s"] * 1e3
        self.notes["envoy_ext_authz"] = ENVOY_SKIPPED

    @property
    def sidecar_key(self) -> Path:
        assert self.sidecar is not None
        return self.sidecar.key

    def memory(self) -> None:
        """RSS with `grants` active grants, in a fresh sidecar process (same flags, OPA and
        machine) so that garbage the allocator kept from the load runs above does not count;
        the load-run sidecar's own RSS is reported alongside."""
        assert self.pool is not None
        a = self.args
        f = self.figures
        f["rss_after_load_mb"] = rss_bytes(self.pid) / 2**20
        f["active_after_load"] = self.active_grants(self.sidecar)
        fresh = SidecarProcess(self.workdir / "sidecar-memory", self.opa_url, *SIDECAR_FLAGS)
        fresh.start()
        try:
            assert fresh.proc is not None
            pid = fresh.proc.pid
            time.sleep(1.0)
            f["rss_before_fill_mb"] = rss_bytes(pid) / 2**20
            c = a.fill_concurrency
            self.step(f"filling a fresh sidecar with {a.grants} standing grants (c={c})")
            started = time.perf_counter()
            r = self.pool.run(
                # 45 grants per task: the shipped policy allows 50 active grants per task.
                Target(kind="fill", socket=str(fresh.socket.resolve()), rotate_every=45, ttl=900),
                c,
                max_calls=-(-a.grants // c),
                warm_calls=0,
            )
            f["fill_per_s"] = r.calls / (time.perf_counter() - started)
            time.sleep(1.0)
            active = self.active_grants(fresh)
            f["active_grants"] = active
            f["rss_mb"] = rss_bytes(pid) / 2**20
            f["rss_per_grant_bytes"] = (
                (f["rss_mb"] - f["rss_before_fill_mb"]) * 2**20 / max(1.0, active)
            )
        finally:
            fresh.stop(timeout=60)

    @staticmethod
    def active_grants(sidecar: SidecarProcess | None) -> float:
        assert sidecar is not None
        return sum(sidecar.metric("jit_active_grants", tier=t) for t in ("standing", "jit"))

    def profile(self, out: Path) -> None:
        assert self.pool is not None
        out.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        for kind in ("jit", "standing", "stream_jit", "stream_standing"):
            self.step(f"profiling the sidecar during a c=1 {kind} run (py-spy)")
            raw = out / f"{kind}.folded"
            proc = subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(self.pid), "--rate", "500", "--format", "raw"),
                    # --gil: samples only the thread holding the GIL, i.e. Python CPU time.
                    *("--nonblocking", "--threads", "--gil", "--output", str(raw)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)
            r = self.pool.run(self.target(kind), 1, max_calls=self.args.calls * 2, warm_calls=50)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            if not raw.exists():
                raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
            summary = summarize_profile(raw.read_text(), len(r.latencies))
            (out / f"{kind}.txt").write_text(summary)
            print(summary, file=sys.stderr)

    # ------------------------------------------------------------------ targets
    def targets(self) -> list[dict[str, Any]]:
        f = self.figures
        rows: list[dict[str, Any]] = []

        def at_most(name: str, value: float, limit: float, what: str) -> None:
            rows.append(
                {
                    "target": name,
                    "value": value,
                    "limit": limit,
                    "ratio": value / limit,
                    "holds": value <= limit,
                    "rule": what,
                }
            )

        def c1_targets(prefix: str, transport: str, jit_factor: float) -> None:
            """The c=1 p50 targets of unary calls (B_rpc) or the stream (B_stream)."""
            b = f[f"{transport}_ms"]
            floor_jit = b + f["B_opa_ms"] + f["B_sign_ms"] + f["B_sync_ms"]
            floor_standing = b + f["B_sign_ms"] + f["B_sync_ms"]
            f[f"floor_{prefix}jit_ms"] = floor_jit
            f[f"floor_{prefix}standing_ms"] = floor_standing
            label = prefix.replace("_", " ")
            at_most(
                f"{label}JIT p50 c=1 (ms)",
                f[f"{prefix}jit_p50_ms"],
                jit_factor * floor_jit,
                f"<= {jit_factor:g} x ({transport} + B_opa + B_sign + B_sync)",
            )
            at_most(
                f"{label}standing p50 c=1 (ms)",
                f[f"{prefix}standing_p50_ms"],
                1.3 * floor_standing,
                f"<= 1.3 x ({transport} + B_sign + B_sync)",
            )

        c1_targets("", "B_rpc", 1.5)
        base = min(f["health_c32_per_s"], f["opa_c32_per_s"])

        def at_least(name: str, value: float, share: float) -> None:
            rows.append(
                {
                    "target": name,
                    "value": value,
                    "limit": share * base,
                    "ratio": value / (share * base),
                    "holds": value >= share * base,
                    "rule": f">= {share:g} x min(health c=32, raw OPA c=32)",
                }
            )

        def p99_at_c8(kind: str, where: str) -> None:
            at_most(
                f"{kind} p99{where} (ms)",
                f[f"{kind}_c8_p99_ms"],
                4 * f[f"{kind}_c8_p50_ms"],
                "<= 4 x p50 at c=8",
            )

        for kind in ("jit", "standing"):
            at_least(f"{kind} throughput c=32 (/s)", f[f"{kind}_c32_per_s"], 0.7)
        for kind in ("jit", "standing"):
            p99_at_c8(kind, " c=8")
        if "rss_mb" in f:
            at_most("RSS, 100k grants (MB)", f["rss_mb"], 150.0, "<= 150 MB")
        # GrantStream (issue 24): floors built from B_stream instead of B_rpc.
        c1_targets("stream_", "B_stream", 1.3)
        for kind, share in (("stream_jit", 0.7), ("stream_standing", 1.0)):
            at_least(f"{kind} throughput, 32 streams (/s)", f[f"{kind}_c32_per_s"], share)
        for kind in ("stream_jit", "stream_standing"):
            p99_at_c8(kind, ", 8 streams")
        if "crash_p99_ms" in f:
            at_most(
                "crash: kill -9 to grants inactive, p99 (ms)",
                f["crash_p99_ms"],
                100.0,
                "<= 100 ms",
            )
        return rows


def summarize_profile(folded: str, calls: int, top: int = 30) -> str:
    """Inclusive and self sample shares per function (line numbers dropped) from py-spy's
    raw (folded) output, over every thread of the sidecar."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        thread = next((fr for fr in frames if fr.startswith("thread ")), "?")
        threads[thread.partition(": ")[2] or thread] += count
        names = [_frame(fr) for fr in frames if not fr.startswith(("process ", "thread "))]
        if not names:
            continue
        total += count
        for name in set(names):
            inclusive[name] += count
        own[names[-1]] += count
    lines = [f"{total} samples while serving {calls} calls"]
    lines.append("threads: " + ", ".join(f"{t} {c / total:.0%}" for t, c in threads.most_common()))
    lines.append(f"\ntop {top} by inclusive share:")
    for name, c in inclusive.most_common(top):
        lines.append(f"  {c / total:6.1%}  {name}")
    lines.append(f"\ntop {top} by self share:")
    for name, c in own.most_common(top):
        lines.append(f"  {c / total:6.1%}  {name}")
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    """`func (path/to/file.py:123)` → `func (file.py)`."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({short})"


def table(figures: dict[str, float], rows: list[dict[str, Any]]) -> str:
    f = figures
    out = ["| figure | value |", "|---|---|"]
    order = [
        ("B_rpc: health Check p50, c=1", "B_rpc_ms", "ms"),
        ("B_opa: raw OPA POST p50, c=1", "B_opa_ms", "ms"),
        ("B_sign: sign one token, median", "B_sign_ms", "ms"),
        ("B_sync: audit append + fsync + SQLite txn, median", "B_sync_ms", "ms"),
        ("floor JIT = B_rpc + B_opa + B_sign + B_sync", "floor_jit_ms", "ms"),
        ("floor standing = B_rpc + B_sign + B_sync", "floor_standing_ms", "ms"),
        ("JIT RequestGrant c=1 p50 / p90 / p99", "jit_p", "ms"),
        ("standing (cached) RequestGrant c=1 p50 / p90 / p99", "standing_p", "ms"),
        ("JIT c=8: grants/s, p50 / p99", "jit_c8", ""),
        ("JIT c=32: grants/s, p50 / p99", "jit_c32", ""),
        ("standing c=8: grants/s, p50 / p99", "standing_c8", ""),
        ("standing c=32: grants/s, p50 / p99", "standing_c32", ""),
        ("health Check c=32: calls/s, p50 / p99", "health_c32", ""),
        ("raw OPA c=32: decisions/s, p50 / p99", "opa_c32", ""),
        ("active grants at the RSS reading", "active_grants", ""),
        ("fresh sidecar RSS before the fill / after", "rss", ""),
        ("load-run sidecar RSS after the c=1/8/32 runs", "rss_after_load", ""),
        ("RSS per added grant", "rss_per_grant_bytes", "B"),
        ("fill rate (standing grants/s, c=8)", "fill_per_s", ""),
        ("full GC collection with 100k grants (in-process engine)", "gc_full_ms", "ms"),
        ("Engine.sweep() with 100k grants: 0 due / 1k due (of which commit)", "sweep", ""),
        ("B_stream: empty GrantStream message p50, c=1", "B_stream_ms", "ms"),
        ("floor stream JIT = B_stream + B_opa + B_sign + B_sync", "floor_stream_jit_ms", "ms"),
        ("floor stream standing = B_stream + B_sign + B_sync", "floor_stream_standing_ms", "ms"),
        ("JIT over the stream c=1 p50 / p90 / p99", "stream_jit_p", "ms"),
        ("standing over the stream c=1 p50 / p90 / p99", "stream_standing_p", "ms"),
        ("JIT, 8 streams: grants/s, p50 / p99", "stream_jit_c8", ""),
        ("JIT, 32 streams: grants/s, p50 / p99", "stream_jit_c32", ""),
        ("standing, 8 streams: grants/s, p50 / p99", "stream_standing_c8", ""),
        ("standing, 32 streams: grants/s, p50 / p99", "stream_standing_c32", ""),
        (
            f"JIT, batches of {BATCH} per message, c=1: p50 per grant",
            "batch_jit_c1_per_grant_ms",
            "ms",
        ),
        (
            f"JIT, batches of {BATCH}, 8 streams: grants/s, p50 / p99 per message",
            "batch_jit_c8",
            "",
        ),
        ("crash: kill -9 to grants inactive, p50 / p99 / max", "crash", ""),
    ]
    for label, key, unit in order:
        if key.endswith("_p"):
            p = key[:-1]
            if f"{p}p50_ms" not in f:
                continue
            value = f"{f[p + 'p50_ms']:.3f} / {f[p + 'p90_ms']:.3f} / {f[p + 'p99_ms']:.3f} ms"
        elif key.endswith(("_c8", "_c32")):
            if f"{key}_per_s" not in f:
                continue
            value = (
                f"{f[key + '_per_s']:.0f}/s, {f[key + '_p50_ms']:.2f} / {f[key + '_p99_ms']:.2f} ms"
            )
        elif key == "rss":
            if "rss_mb" not in f:
                continue
            value = f"{f['rss_before_fill_mb']:.1f} MB / {f['rss_mb']:.1f} MB"
        elif key == "rss_after_load":
            if "rss_after_load_mb" not in f:
                continue
            value = (
                f"{f['rss_after_load_mb']:.1f} MB with {f['active_after_load']:.0f} active grants"
            )
        elif key == "crash":
            if "crash_p50_ms" not in f:
                continue
            value = (
                f"{f['crash_p50_ms']:.1f} / {f['crash_p99_ms']:.1f} / {f['crash_max_ms']:.1f} ms"
            )
        elif key == "sweep":
            if "sweep_0_due_ms" not in f:
                continue
            value = (
                f"{f['sweep_0_due_ms'] * 1e3:.1f} µs / {f['sweep_1k_due_ms']:.2f} ms "
                f"({f['sweep_1k_due_commit_ms']:.2f} ms)"
            )
        elif key not in f:
            continue
        elif unit == "ms":
            value = f"{f[key]:.3f} ms"
        elif unit == "B":
            value = f"{f[key]:.0f} B"
        else:
            value = f"{f[key]:.0f}"
        out.append(f"| {label} | {value} |")
    out += ["", "| target | measured | limit | measured / limit | holds |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['target']}: {r['rule']} | {r['value']:.3f} | {r['limit']:.3f} | "
            f"{r['ratio']:.2f} | {'yes' if r['holds'] else 'NO'} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="calls per c=1 latency figure")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the c=1 runs")
    p.add_argument("--sign-calls", type=int, default=4000)
    p.add_argument("--sync-calls", type=int, default=400)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per throughput run")
    p.add_argument("--grants", type=int, default=100_000, help="active grants for RSS/sweep")
    p.add_argument("--fill-concurrency", type=int, default=8)
    p.add_argument("--opa-transport", choices=("tcp", "unix"), default="unix")
    p.add_argument("--skip-memory", action="store_true", help="no RSS fill, no sweep")
    p.add_argument("--crash-trials", type=int, default=40, help="agents killed (crash figure)")
    p.add_argument("--profile", type=Path, help="also write py-spy profiles to this directory")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    started = time.perf_counter()
    bench = Bench(args)
    info = machine()
    try:
        bench.start()
        bench.run()
        rows = bench.targets()
    finally:
        bench.stop()
    elapsed = time.perf_counter() - started
    text = table(bench.figures, rows)
    print(text)
    print(f"\nenvoy ext_authz: {ENVOY_SKIPPED}")
    print(
        f"\n{info['nproc']} cores, {info['cpu']}, kernel {info['kernel']}, Python "
        f"{info['python']}, OPA {info['opa']}; load average at start "
        f"{info['loadavg_at_start']:.2f}; OPA over {args.opa_transport}; {elapsed:.0f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "commit": _git_commit(),
                "machine": info,
                "settings": {
                    "opa_transport": args.opa_transport,
                    "durability": "fsync",
                    "calls": args.calls,
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "grants": args.grants,
                    "rotate_every": ROTATE_EVERY,
                    "batch": BATCH,
                    "crash_trials": args.crash_trials,
                },
                "figures": bench.figures,
                "targets": rows,
                "notes": bench.notes,
                "elapsed_s": elapsed,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
