"""Does the console cost `/classify` anything? The service with and without it, side by side.

    python bench/console.py [--rounds 12] [--seconds 2] [--levels 1 8 32]

Makes a "before" checkout of HEAD without the console (a git worktree whose `service/app.py`
loses the two lines that import and mount it), starts `piston serve` (1 worker) from it and
from this tree on the same bundle, and drives `/classify` on both in alternating bursts
(before, after, before, ...), so whatever else the machine does falls on both alike.
Prints the median over bursts of req/s, p50 and p99 for each, and the after/before ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
assert _spec is not None and _spec.loader is not None
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)


def before_tree(dest: Path) -> Path:
    """HEAD checked out at `dest`, with the console's import and mount removed."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(dest), "HEAD"],
                   check=True, capture_output=True)
    app = dest / "service" / "app.py"
    lines = app.read_text().splitlines(keepends=True)
    kept = [line for line in lines if "console_app" not in line]
    if len(lines) - len(kept) != 2:
        raise SystemExit(f"expected 2 console lines in {app}, found {len(lines) - len(kept)}")
    app.write_text("".join(kept))
    return dest


def start(tree: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", "1"], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def burst(port: int, payload: bytes, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """(req/s, latencies in ms) of `concurrency` keep-alive clients for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> float:
        begin = time.perf_counter()
        await asyncio.gather(*(serve._one_connection(port, payload, begin + seconds, latencies,
                                                     errors) for _ in range(concurrency)))
        return time.perf_counter() - begin

    wall = asyncio.run(run())
    if errors:
        raise SystemExit(f"{len(errors)} failed requests on port {port}: {errors[:3]}")
    return len(latencies) / wall, [x * 1000 for x in latencies]


def compare(ports: dict[str, int], payload: bytes, level: int, rounds: int,
            seconds: float) -> dict[str, dict[str, float]]:
    """Alternating bursts; the median of each figure over the rounds."""
    figures: dict[str, dict[str, list[float]]] = {k: {"rps": [], "p50": [], "p99": []}
                                                  for k in ports}
    for port in ports.values():
        burst(port, payload, level, 1.0)  # warm both
    for _ in range(rounds):
        for name, port in ports.items():
            rps, lat = burst(port, payload, level, seconds)
            figures[name]["rps"].append(rps)
            figures[name]["p50"].append(float(np.percentile(lat, 50)))
            figures[name]["p99"].append(float(np.percentile(lat, 99)))
    return {name: {k: float(np.median(v)) for k, v in f.items()} for name, f in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="bursts per server and level")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one burst")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    import httpx

    data, work, env = serve.bench_env("piston-bench-console-")
    serve.ensure_bundle(env["PISTON_REGISTRY"], data)
    image = sorted(Path(data).glob("*/*.jp*g"))[0].read_bytes()
    payload = serve.request_bytes("/classify", image, "image/jpeg")
    trees = {"before": before_tree(work / "before"), "after": ROOT}
    ports = {name: serve.free_port() for name in trees}
    procs = {name: start(tree, ports[name], env) for name, tree in trees.items()}
    try:
        for name, proc in procs.items():
            serve.wait_up(ports[name], "/readyz", proc)
        pages = {n: httpx.get(f"http://127.0.0.1:{p}/ui/", timeout=10).status_code
                 for n, p in ports.items()}
        print(f"GET /ui/: before {pages['before']}, after {pages['after']}", flush=True)
        for level in args.levels:
            m = compare(ports, payload, level, args.rounds, args.seconds)
            b, a = m["before"], m["after"]
            print(f"c={level:<3d} before {b['rps']:6.0f} req/s p50 {b['p50']:6.2f} ms"
                  f" p99 {b['p99']:6.2f} ms | after {a['rps']:6.0f} req/s p50 {a['p50']:6.2f} ms"
                  f" p99 {a['p99']:6.2f} ms | after/before req/s {a['rps'] / b['rps']:.3f}x"
                  f" p50 {a['p50'] / b['p50']:.3f}x p99 {a['p99'] / b['p99']:.3f}x", flush=True)
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(work / "before")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
