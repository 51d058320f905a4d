"""What the per-worker body budget saves under an upload flood: with it and without it.

    python bench/flood.py [--clients 64] [--requests 2] [--mb 20]

Starts `piston serve` (1 worker) twice on the same bundle, once with the default
PISTON_MAX_BODY_BYTES_IN_FLIGHT and once with a budget no flood reaches (as before it
existed), and sends each the same flood: `--clients` threads posting a noise PNG of about
`--mb` MB `--requests` times each. Prints, per server, the answers by status, the seconds the
flood took, and the serving process's idle and peak resident memory (sampled every 20 ms,
and its VmHWM), then the ratio of the peak growths. Memory, unlike throughput, hardly
depends on the machine's other load; the load average is printed anyway.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
assert _spec is not None and _spec.loader is not None
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)
UNBOUNDED = 2**40


def noise_png(megabytes: float) -> bytes:
    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def flood(port: int, pid: int, body: bytes, clients: int, requests: int) -> dict[str, float]:
    """Flood one server; its answers by status, seconds, and the worker's memory in MB."""
    import httpx

    url, headers = f"http://127.0.0.1:{port}", {"content-type": "image/png"}
    with httpx.Client(base_url=url, timeout=300) as client:  # warm: one large decode
        assert client.post("/classify", content=body, headers=headers).status_code == 200
    tree = psutil.Process(pid)
    worker = max([tree, *tree.children(recursive=True)], key=lambda p: p.memory_info().rss)
    idle = worker.memory_info().rss
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            samples.append(worker.memory_info().rss)

    def one_client(_: int) -> list[int]:
        with httpx.Client(base_url=url, timeout=300) as client:
            return [client.post("/classify", content=body, headers=headers).status_code
                    for _ in range(requests)]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for answers in pool.map(one_client, range(clients)) for s in answers]
    took = time.monotonic() - start
    stop.set()
    sampler.join()
    hwm = hwm_bytes(worker.pid)
    peak = max([hwm, *samples])
    return {"200": statuses.count(200), "503": statuses.count(503),
            "other": len(statuses) - statuses.count(200) - statuses.count(503),
            "seconds": took, "idle_mb": idle / 2**20, "peak_mb": peak / 2**20,
            "growth_mb": (peak - idle) / 2**20}


def hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run(env: dict[str, str], budget: int, body: bytes, args: argparse.Namespace,
        work: Path) -> dict[str, float]:
    port = serve.free_port()
    log = (work / f"server-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", "1"], cwd=ROOT, stdout=log, stderr=log,
                            env={**env, "PISTON_MAX_BODY_BYTES_IN_FLIGHT": str(budget)},
                            start_new_session=True)
    try:
        serve.wait_up(port, "/readyz", proc)
        return flood(port, proc.pid, body, args.clients, args.requests)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--mb", type=float, default=20.0)
    args = parser.parse_args()
    data, work, env = serve.bench_env("piston-flood-")
    serve.ensure_bundle(env["PISTON_REGISTRY"], data)
    body = noise_png(args.mb)
    print(f"load average before: {os.getloadavg()}; body {len(body) / 1e6:.1f} MB,"
          f" {args.clients} clients x {args.requests}", flush=True)
    from piston.settings import Settings

    rows = {"budget": run(env, Settings().max_body_bytes_in_flight, body, args, work),
            "unbounded": run(env, UNBOUNDED, body, args, work)}
    for name, row in rows.items():
        print(f"{name:10s} 200: {row['200']:4.0f}  503: {row['503']:4.0f}  other:"
              f" {row['other']:3.0f}  {row['seconds']:6.1f} s  worker RSS idle"
              f" {row['idle_mb']:6.0f} MB  peak {row['peak_mb']:6.0f} MB"
              f"  (+{row['growth_mb']:.0f})")
    ratio = rows["unbounded"]["growth_mb"] / max(rows["budget"]["growth_mb"], 1.0)
    print(f"peak growth unbounded / budget: {ratio:.1f}x; load average after:"
          f" {os.getloadavg()}")


if __name__ == "__main__":
    main()
