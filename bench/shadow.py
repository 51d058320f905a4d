"""Does shadow scoring cost `/classify` anything? The service with a shadow at share 1.0 vs off.

    python bench/shadow.py [--duration 16] [--rounds 4] [--levels 32] [--workers 1]

Starts two `piston serve` from this tree on the same registry and bundle: "off" (no shadow)
and "shadow" (a second bundle shadowing production on every live image, `--share`). Each
has its own Redis database. Drives `/classify` on both in alternating bursts with
bench/serve.py's load generator, so the machine's other load falls on both alike, and prints
req/s, p50, p99 and the shadow/off ratios, then the shadow's own count: images compared and
dropped because production was busy (the shadow yields to production by design).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
assert _spec is not None and _spec.loader is not None
serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve)

TOKEN = "bench-shadow-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def candidate(registry: str, data: str) -> str:
    """A second bundle beside production (5 epochs, another seed) to shadow."""
    from piston.registry import Registry
    from piston.storage import open_storage
    from training.config import load_config
    from training.pipeline import GateBar, train_bundle

    reg = Registry(open_storage(registry))
    others = [v for v in reg.versions() if v != reg.current()]
    if others:
        return others[-1]
    print("training a candidate (5 epochs, seed 3)", flush=True)
    config = load_config("bn_cnn", overrides={"epochs": 5, "seed": 3})
    return train_bundle(data, config, reg, GateBar(), Path(registry).parent / "runs",
                        40_000_000).version


def start(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def shadow_on(port: int, version: str, production: str, share: float) -> None:
    url = f"http://127.0.0.1:{port}"
    answer = httpx.post(f"{url}/admin/shadow", headers=AUTH, timeout=120,
                        json={"version": version, "share": share, "expected": production})
    answer.raise_for_status()
    deadline = time.monotonic() + 120
    while not all(httpx.get(f"{url}/model", timeout=10).json()["shadow"]["loaded"]
                  for _ in range(16)):
        if time.monotonic() > deadline:
            raise SystemExit("the candidate did not load on every worker in 120 s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=16.0, help="seconds per level")
    parser.add_argument("--rounds", type=int, default=4, help="alternating bursts per level")
    parser.add_argument("--levels", type=int, nargs="+", default=[32])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--share", type=float, default=1.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="databases 9 (off) and 10 (shadow) are emptied and used")
    args = parser.parse_args()

    import redis

    data, work, env = serve.bench_env("piston-bench-shadow-")
    serve.ensure_bundle(env["PISTON_REGISTRY"], data)
    from piston.registry import Registry
    from piston.storage import open_storage

    production = Registry(open_storage(env["PISTON_REGISTRY"])).current()
    assert production is not None
    version = candidate(env["PISTON_REGISTRY"], data)
    image = sorted(Path(data).glob("*/*.jp*g"))[0].read_bytes()
    payload = serve.request_bytes("/classify", image, "image/jpeg")
    ports = {"off": serve.free_port(), "shadow": serve.free_port()}
    procs = {}
    for name, db in (("off", 9), ("shadow", 10)):
        redis.Redis.from_url(f"{args.redis}/{db}").flushdb()
        procs[name] = start({**env, "PISTON_REDIS_URL": f"{args.redis}/{db}",
                             "PISTON_ADMIN_TOKEN": TOKEN}, ports[name], args.workers)
    load_before = os.getloadavg()
    try:
        for name, proc in procs.items():
            serve.wait_up(ports[name], "/readyz", proc)
        shadow_on(ports["shadow"], version, production, args.share)
        targets = {name: (port, payload) for name, port in ports.items()}
        rows = serve.measure_levels(targets, args)
        time.sleep(2)  # the last counts reach Redis (flushed every second)
        report = httpx.get(f"http://127.0.0.1:{ports['shadow']}/admin/shadow", headers=AUTH,
                           timeout=30).json()
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nload average before/after: {load_before} / {os.getloadavg()}")
    print(f"shadow of {version} vs {production} at share {args.share}, {args.workers} worker(s)")
    for level in args.levels:
        s, o = rows[("shadow", level)], rows[("off", level)]
        print(f"  c={level:<3d} req/s {s['rps'] / o['rps']:.2f}x  p50 {s['p50'] / o['p50']:.2f}x"
              f"  p99 {s['p99'] / o['p99']:.2f}x  (shadow / off)")
    print(f"shadow: picked {report['offered']}, compared {report['compared']},"
          f" dropped {report['dropped']}, failed {report['failed']}; {report['headline']}")


if __name__ == "__main__":
    main()
