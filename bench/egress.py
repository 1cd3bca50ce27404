"""What the egress proxy adds to a request (docs/performance.md, "Secretless HTTP egress").

    .venv/bin/python -m bench.egress [--n 2000] [--concurrency 1 32]

Starts the real OPA, a sidecar process with `--egress-config`, and an HTTPS upstream (the
tests' recording ticket API, tests/upstream.py) in a process of its own. Then, in one run and
alternating in rounds, times GET /api/tickets/<i> sent directly to the upstream (HTTPS, the
API key in a header: what an agent holding the key would do) and the same request through the
proxy (plain HTTP on loopback with the JIT token; the proxy checks the grant, injects the key
and calls the upstream over HTTPS). Both clients keep connections alive. Prints p50/p99 of
each, the added p50 and the ratio, at each concurrency (one grant per concurrent agent).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

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


async def compare(
    concurrency: int,
    n: int,
    rounds: int,
    proxy_port: int,
    api_port: int,
    ca: Path,
    grants: list[str],
) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    direct_sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=1))
        for _ in range(concurrency)
    ]
    proxy_sessions = [
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for _ in range(concurrency)
    ]
    direct_urls = [f"https://127.0.0.1:{api_port}/api/tickets/b{i}" for i in range(concurrency)]
    proxy_urls = [
        f"http://127.0.0.1:{proxy_port}/ticket-api/tickets/b{i}" for i in range(concurrency)
    ]
    direct_headers = [{"X-Api-Key": SECRET}] * concurrency
    proxy_headers = [{"Authorization": f"Bearer {grants[i]}"} for i in range(concurrency)]
    try:
        for sessions, urls, headers in (
            (direct_sessions, direct_urls, direct_headers),
            (proxy_sessions, proxy_urls, proxy_headers),
        ):
            await timed(sessions, urls, headers, max(concurrency * 10, 100))  # warm up
        direct: list[float] = []
        proxied: list[float] = []
        walls = [0.0, 0.0]
        for _ in range(rounds):  # alternate, so both see the same background load
            started = time.perf_counter()
            direct += await timed(direct_sessions, direct_urls, direct_headers, n // rounds)
            walls[0] += time.perf_counter() - started
            started = time.perf_counter()
            proxied += await timed(proxy_sessions, proxy_urls, proxy_headers, n // rounds)
            walls[1] += time.perf_counter() - started
    finally:
        for s in (*direct_sessions, *proxy_sessions):
            await s.close()
    d50, p50 = statistics.median(direct), statistics.median(proxied)
    print(
        f"c={concurrency:<3} n={len(direct)}+{len(proxied)}  "
        f"direct p50 {d50 * 1e3:6.2f} ms p99 {pct(direct, 0.99) * 1e3:6.2f} ms | "
        f"proxy p50 {p50 * 1e3:6.2f} ms p99 {pct(proxied, 0.99) * 1e3:6.2f} ms | "
        f"added p50 {(p50 - d50) * 1e3:5.2f} ms  ratio {p50 / d50:4.2f} | "
        f"req/s direct {len(direct) / walls[0]:5.0f} proxy {len(proxied) / walls[1]:5.0f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="timed requests per side and level")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ca, cert, key = tls_files(root / "tls")
        secret_file = root / "api.key"
        secret_file.write_text(SECRET)
        upstream = subprocess.Popen(
            [sys.executable, "-c", UPSTREAM, str(cert), str(key)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert upstream.stdout is not None
        api_port = int(upstream.stdout.readline())
        opa = OpaServer(root).start()
        proxy_port = free_port()
        config = root / "egress.toml"
        config.write_text(
            f'listen = "127.0.0.1:{proxy_port}"\n[upstreams.ticket-api]\n'
            f'url = "https://127.0.0.1:{api_port}/api"\nca_file = "{ca}"\ninject = "header"\n'
            f'header = "X-Api-Key"\nformat = "{{secret}}"\nsecret_file = "{secret_file}"\n'
        )
        sidecar = SidecarProcess(
            root / "sc",
            opa.url,
            "--egress-config",
            str(config),
            "--heartbeat-interval",
            "300",  # the bench sends none; the tasks must outlive it
        ).start()
        try:
            wait_for(lambda: sidecar.metric("jit_egress_requests_total") >= 0)
            with sidecar.client() as client:
                grants = []
                for i in range(max(args.concurrency)):
                    task = client.begin_task("egress bench", max_duration=3600)
                    grant = client.request_grant(
                        task.task_id,
                        "https-api.read",
                        f"https-api://ticket-api/tickets/b{i}",
                        ttl_seconds=900,
                    )
                    grants.append(grant.token)
                for c in args.concurrency:
                    asyncio.run(compare(c, args.n, args.rounds, proxy_port, api_port, ca, grants))
        finally:
            sidecar.stop()
            opa.stop()
            upstream.kill()
            upstream.wait()


if __name__ == "__main__":
    main()
