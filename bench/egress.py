"""What the egress proxy adds to a request (docs/performance.md, "Secretless HTTP egress").

    .venv/bin/python -m bench.egress [--n 2000] [--rounds 5] [--concurrency 1 32] [--base REV]

Starts the real OPA, a sidecar process with `--egress-config`, and an HTTPS upstream (the
tests' recording ticket API, tests/upstream.py) in a process of its own. Then, in one run and
alternating in rounds, times GET /api/tickets/<i> sent directly to the upstream (HTTPS, the
API key in a header: what an agent holding the key would do) and the same request through the
proxy (plain HTTP on loopback with the JIT token; the proxy checks the grant, injects the key
and calls the upstream over HTTPS). Both clients keep connections alive. Prints p50/p99 of
each, the added p50 and the ratio, the requests/s, and the proxy's CPU time per proxied
request (the sidecar process, all threads, from /proc: steadier than latency on a loaded
machine), at each concurrency (one grant per concurrent agent), with the 1-minute load
average, as Markdown rows to paste into docs/performance.md.

`--base REV` also starts a second sidecar from another revision (exported with `git archive`,
as bench.ab does) behind the same upstream, OPA and client, and alternates all three sides
round after round: an A/B of a proxy change in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from bench.ab import export
from bench.run import cpu_seconds
from tests.harness import OpaServer, SidecarProcess, free_port, tls_files, wait_for

SECRET = "bench_api_key_0123456789abcdef"  # noqa: S105 (a throwaway test key)
UPSTREAM = """
import sys, time
from pathlib import Path
from tests.upstream import TicketApi
api = TicketApi(Path(sys.argv[1]), Path(sys.argv[2]))
api.received = type("Sink", (), {"append": lambda self, item: None})()
api.start()
print(api.port, flush=True)
while True:
    time.sleep(3600)
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(
    sessions: list[aiohttp.ClientSession], urls: list[str], headers: list[dict[str, str]], n: int
) -> list[float]:
    """n requests spread over len(sessions) concurrent agents; per-request seconds."""
    out: list[float] = []
    per_agent = n // len(sessions)

    async def agent(i: int) -> None:
        for _ in range(per_agent):
            started = time.perf_counter()
            async with sessions[i].get(urls[i], headers=headers[i]) as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"unexpected HTTP {response.status} from {urls[i]}")
            out.append(time.perf_counter() - started)

    await asyncio.gather(*(agent(i) for i in range(len(sessions))))
    return out


@dataclass
class Proxy:
    """One sidecar's egress proxy as the bench sees it."""

    name: str
    port: int
    pid: int
    grants: list[str]
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0


async def compare(
    concurrency: int, n: int, rounds: int, proxies: list[Proxy], api_port: int, ca: Path
) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    direct_sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=1))
        for _ in range(concurrency)
    ]
    direct_urls = [f"https://127.0.0.1:{api_port}/api/tickets/b{i}" for i in range(concurrency)]
    direct_headers = [{"X-Api-Key": SECRET}] * concurrency
    sides: list[tuple[Proxy | None, list[aiohttp.ClientSession], list[str], list[dict[str, str]]]]
    sides = [(None, direct_sessions, direct_urls, direct_headers)]
    for proxy in proxies:
        proxy.latencies, proxy.wall, proxy.cpu = [], 0.0, 0.0
        sides.append(
            (
                proxy,
                [
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                    for _ in range(concurrency)
                ],
                [
                    f"http://127.0.0.1:{proxy.port}/ticket-api/tickets/b{i}"
                    for i in range(concurrency)
                ],
                [{"Authorization": f"Bearer {proxy.grants[i]}"} for i in range(concurrency)],
            )
        )
    direct: list[float] = []
    direct_wall = 0.0
    try:
        for _, sessions, urls, headers in sides:
            await timed(sessions, urls, headers, max(concurrency * 10, 100))  # warm up
        for r in range(rounds):  # alternate, so all sides see the same background load
            proxied = sides[1:] if r % 2 == 0 else sides[:0:-1]
            for proxy, sessions, urls, headers in [sides[0], *proxied]:
                cpu = cpu_seconds(proxy.pid) if proxy is not None else 0.0
                started = time.perf_counter()
                got = await timed(sessions, urls, headers, n // rounds)
                wall = time.perf_counter() - started
                if proxy is None:
                    direct += got
                    direct_wall += wall
                else:
                    proxy.cpu += cpu_seconds(proxy.pid) - cpu
                    proxy.latencies += got
                    proxy.wall += wall
    finally:
        for _, sessions, _, _ in sides:
            for s in sessions:
                await s.close()
    d50 = statistics.median(direct)
    load = os.getloadavg()[0]
    for proxy in proxies:
        p50 = statistics.median(proxy.latencies)
        print(
            f"| {proxy.name} | c={concurrency} "
            f"| {d50 * 1e3:.2f} / {pct(direct, 0.99) * 1e3:.2f} ms "
            f"| {p50 * 1e3:.2f} / {pct(proxy.latencies, 0.99) * 1e3:.2f} ms "
            f"| **{(p50 - d50) * 1e3:.2f} ms** | {p50 / d50:.2f} "
            f"| {len(direct) / direct_wall:,.0f} / {len(proxy.latencies) / proxy.wall:,.0f} "
            f"| {proxy.cpu / len(proxy.latencies) * 1e6:.0f} µs | {load:.1f} |".replace(",", " "),
            flush=True,
        )


def start_proxy(
    name: str,
    workdir: Path,
    opa_url: str,
    config: Path,
    port: int,
    agents: int,
    env: dict[str, str],
) -> tuple[SidecarProcess, Proxy]:
    """A sidecar serving the egress proxy, and one grant per concurrent agent."""
    sidecar = SidecarProcess(
        workdir,
        opa_url,
        "--egress-config",
        str(config),
        "--heartbeat-interval",
        "300",  # the bench sends none; the tasks must outlive it
        env=env,
    ).start()
    wait_for(lambda: sidecar.metric("jit_egress_requests_total") >= 0)
    grants = []
    with sidecar.client() as client:
        for i in range(agents):
            task = client.begin_task("egress bench", max_duration=3600)
            grant = client.request_grant(
                task.task_id,
                "https-api.read",
                f"https-api://ticket-api/tickets/b{i}",
                ttl_seconds=900,
            )
            grants.append(grant.token)
    assert sidecar.proc is not None
    return sidecar, Proxy(name, port, sidecar.proc.pid, grants)


def egress_config(root: Path, name: str, port: int, api_port: int, ca: Path, key: Path) -> Path:
    config = root / f"egress-{name}.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\n[upstreams.ticket-api]\n'
        f'url = "https://127.0.0.1:{api_port}/api"\nca_file = "{ca}"\ninject = "header"\n'
        f'header = "X-Api-Key"\nformat = "{{secret}}"\nsecret_file = "{key}"\n'
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="timed requests per side and level")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--base", help="also run this git revision's proxy, alternating")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca, cert, key = tls_files(root / "tls")
        secret_file = root / "api.key"
        secret_file.write_text(SECRET)
        upstream = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM, str(cert), str(key)],
            stdout=subprocess.PIPE,
            cwd=here,
            env={**os.environ, "PYTHONPATH": str(here)},
        )
        assert upstream.stdout is not None
        api_port = int(upstream.stdout.readline())
        opa = OpaServer(root).start()
        sidecars: list[SidecarProcess] = []
        proxies: list[Proxy] = []
        try:
            sides = [("head", {})]
            if args.base:
                sides.append((args.base, {"PYTHONPATH": str(export(args.base, root / "base"))}))
            for name, env in sides:
                port = free_port()
                config = egress_config(root, str(len(proxies)), port, api_port, ca, secret_file)
                sidecar, proxy = start_proxy(
                    name,
                    root / f"sidecar-{len(proxies)}",
                    opa.url,
                    config,
                    port,
                    max(args.concurrency),
                    env,
                )
                sidecars.append(sidecar)
                proxies.append(proxy)
            print(
                f"{args.n} timed requests per side and level, {args.rounds} alternating rounds; "
                f"1-min load average at start {os.getloadavg()[0]:.1f}\n",
                flush=True,
            )
            print(
                "| proxy | concurrency | direct p50 / p99 | through the proxy p50 / p99 "
                "| added p50 | ratio (p50) | requests/s direct / proxy "
                "| proxy CPU per request | load (1 min) |\n|---|---|---|---|---|---|---|---|---|",
                flush=True,
            )
            for c in args.concurrency:
                asyncio.run(compare(c, args.n, args.rounds, proxies, api_port, ca))
        finally:
            for sidecar in sidecars:
                sidecar.stop()
            opa.stop()
            upstream.kill()
            upstream.wait()


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)  # only the base sidecar gets one
    main()
