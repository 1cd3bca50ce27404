"""`python -m bench.ab --base REV`: this tree's sidecar against another revision's, fairly.

On a shared machine the background load drifts by more than most optimisations gain, so two
`make bench` runs minutes apart cannot tell a 10 % change from noise. This starts both
sidecars at once (the base revision exported with `git archive` and run with PYTHONPATH
pointing at it; same OPA, same flags as `make bench`) and alternates between them, round
after round, with the same load: RequestGrant (JIT and cached standing) at c=1 and c=32.
Per side it reports the p50 at c=1, the throughput at c=32 and the sidecar's CPU time per
call (all threads, from /proc), each as the median over rounds.

`--memory N` compares resident memory instead, the way `make bench` measures it: per round,
a fresh sidecar of each side (one after the other, order alternating) filled to N standing
grants (45 per task), its VmRSS read before and after the fill.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import floor  # noqa: E402
from bench.load import LoadPool, Target  # noqa: E402
from bench.run import ROTATE_EVERY, SIDECAR_FLAGS, cpu_seconds, pct, rss_bytes  # noqa: E402
from tests.harness import OpaServer, SidecarProcess, wait_for  # noqa: E402


def export(rev: str, into: Path) -> Path:
    """The tree of `rev` as plain files (no worktree, no change to the repository)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "sidecar", "rego"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=600, help="c=1 calls per round and kind")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per c=32 run")
    p.add_argument(
        "--policy",
        choices=("base", "head"),
        default="base",
        help="whose rego/ OPA runs for both sides (default: the base's, which both sidecars "
        "can feed: a newer policy may need input an older sidecar does not send; policy cost "
        "on its own is bench/policy_eval.py's)",
    )
    p.add_argument(
        "--memory",
        type=int,
        default=0,
        metavar="GRANTS",
        help="compare the RSS of fresh sidecars filled to GRANTS active grants instead",
    )
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="jit-ab-"))
    pool = LoadPool(32)
    opa: OpaServer | None = None
    sides: dict[str, SidecarProcess] = {}
    try:
        src = export(args.base, work / "base-src")
        (work / "opa").mkdir()
        rego = [src / "rego"] if args.policy == "base" else [ROOT / "rego"]
        opa = OpaServer(work / "opa", rego, unix_socket=work / "opa.sock").start()
        url = f"unix://{work / 'opa.sock'}"
        env = {"PYTHONPATH": str(src)}
        if args.memory:
            return _memory(args, pool, work, url, env)
        sides["base"] = SidecarProcess(work / "base", url, *SIDECAR_FLAGS, env=env).start()
        sides["head"] = SidecarProcess(work / "head", url, *SIDECAR_FLAGS).start()
        bodies = floor.opa_bodies(ROTATE_EVERY)
        samples: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            print(f"round {r + 1}/{args.rounds} ({' then '.join(order)})", file=sys.stderr)
            for name in order:
                proc = sides[name]
                assert proc.proc is not None
                pid = proc.proc.pid
                for kind in ("jit", "standing"):
                    target = Target(
                        kind=kind,
                        socket=str(proc.socket.resolve()),
                        opa_url=url,
                        opa_path="/v1/data/jit/decision",
                        opa_bodies=bodies,
                    )
                    got = samples[name]
                    cpu = cpu_seconds(pid)
                    res = pool.run(target, 1, max_calls=args.calls, warm_calls=20)
                    got.setdefault(f"{kind}_c1_cpu_ms", []).append(
                        (cpu_seconds(pid) - cpu) / (args.calls + 20) * 1e3
                    )
                    got.setdefault(f"{kind}_c1_p50_ms", []).append(pct(res.latencies, 50) * 1e3)
                    cpu = cpu_seconds(pid)
                    res = pool.run(target, 32, duration=args.duration, warm_calls=5)
                    got.setdefault(f"{kind}_c32_cpu_ms", []).append(
                        (cpu_seconds(pid) - cpu) / (res.calls + 5 * 32) * 1e3
                    )
                    got.setdefault(f"{kind}_c32_per_s", []).append(res.throughput)
                    got.setdefault(f"{kind}_c32_p50_ms", []).append(pct(res.latencies, 50) * 1e3)
                    got.setdefault(f"{kind}_c32_p99_ms", []).append(pct(res.latencies, 99) * 1e3)
        _print_medians(args, samples, "{:.3f}", "{:.2f}")
    finally:
        pool.close()
        for proc in sides.values():
            with contextlib.suppress(Exception):
                proc.stop(timeout=30)
            if proc.proc is not None:
                proc.kill()
        if opa is not None:
            opa.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _memory(
    args: argparse.Namespace, pool: LoadPool, work: Path, url: str, env: dict[str, str]
) -> int:
    """RSS of fresh sidecars of both sides filled to `args.memory` grants, round by round."""
    envs = {"base": env, "head": None}
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in envs}
    concurrency = 8
    for r in range(args.rounds):
        order = list(envs) if r % 2 == 0 else list(reversed(envs))
        for name in order:
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
            proc = SidecarProcess(work / f"{name}-{r}", url, *SIDECAR_FLAGS, env=envs[name])
            proc.start(wait=False)
            try:
                wait_for(
                    proc.ready_to_serve, 120, what=f"the {name} sidecar to start (slow under load)"
                )
                assert proc.proc is not None
                time.sleep(1.0)
                before = rss_bytes(proc.proc.pid) / 2**20
                pool.run(
                    Target(
                        kind="fill", socket=str(proc.socket.resolve()), rotate_every=45, ttl=900
                    ),
                    concurrency,
                    max_calls=-(-args.memory // concurrency),
                    warm_calls=0,
                )
                time.sleep(1.0)
                after = rss_bytes(proc.proc.pid) / 2**20
                active = sum(proc.metric("jit_active_grants", tier=t) for t in ("standing", "jit"))
            finally:
                proc.stop(timeout=60)
            got = samples[name]
            got.setdefault("rss_before_fill_mb", []).append(before)
            got.setdefault("rss_filled_mb", []).append(after)
            got.setdefault("active_grants", []).append(active)
            got.setdefault("bytes_per_grant", []).append((after - before) * 2**20 / max(1, active))
    _print_medians(args, samples, "{:.1f}", "{:.3f}")
    return 0


def _print_medians(
    args: argparse.Namespace, samples: dict[str, dict[str, list[float]]], value: str, ratio: str
) -> None:
    """The table: each figure's median over the rounds, per side, and head / base."""
    print(f"\nbase = {args.base}, head = working tree; median over {args.rounds} rounds")
    print("| figure | base | head | head / base |\n|---|---|---|---|")
    for key in samples["base"]:
        b = statistics.median(samples["base"][key])
        h = statistics.median(samples["head"][key])
        print(f"| {key} | {value.format(b)} | {value.format(h)} | {ratio.format(h / b)} |")


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)  # only the base sidecar gets one
    sys.exit(main())
