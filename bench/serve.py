"""Serving benchmark: our BentoML /classify vs a naive uvicorn endpoint vs the in-process ceiling.

    python bench/serve.py [--duration 8] [--rounds 4] [--workers 1] [--runtimes onnx torch]

Everything in one run on the same model: starts `piston serve` once per runtime
(PISTON_RUNTIME=onnx, torch) and a naive Starlette app on uvicorn (torch decode + forward per
request, no batching), drives them with a small asyncio load generator (raw HTTP/1.1
keep-alive sockets, so the client costs little CPU) at concurrency 1, 8 and 32 in
alternating bursts (so the machine's other load falls on all of them alike), then
`/classify_batch` against decode + forward in-process at batch 32 in each runtime (the two
ceilings), `/classify?explain=true` against plain `/classify` at one client on each of
our servers (the heatmap's cost), and at 32 clients our server against the same server on
the same bundle without its novelty check (published again with `novelty: null`, in a second
registry: the novelty check's cost). Prints requests/s, p50/p99, stalls (requests over 50 ms),
ratios and resident memory. A "plain" server per runtime runs our own routes, engine and
batcher on uvicorn without BentoML, to separate BentoML's per-request cost from ours. The
machine's load average is printed before and after: compare ratios within one run, never
figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

if TYPE_CHECKING:
    from piston.runtime import RuntimeName

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def torch_threads() -> None:
    """The same torch threading as the service's workers, for a like-for-like comparison."""
    from service.app import set_torch_threads

    set_torch_threads()


# -- the naive baseline server --------------------------------------------------------------

def naive_server(port: int, model_dir: str) -> None:
    """POST /classify: decode + forward + decide per request, inline, no batching."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from piston.bundle import Predictor
    from piston.imaging import preprocess
    from piston.scoring import decide

    predictor = Predictor.load(model_dir, "torch", 1)
    torch_threads()

    async def classify(request: Request) -> JSONResponse:
        array = preprocess(await request.body(), predictor.contract)
        return JSONResponse(decide(predictor, predictor.forward(array[None]))[0].model_dump())

    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def plain_server(port: int, registry: str, runtime: RuntimeName) -> None:
    """Our engine and request reading on plain uvicorn: the same work minus BentoML."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from piston.errors import PistonError
    from piston.follow import ModelFollower
    from piston.registry import Registry
    from piston.storage import open_storage
    from service.engine import Engine, Limits
    from service.errors import error_response
    from service.inputs import Upload
    from service.metrics import service_metrics

    follower = ModelFollower(Registry(open_storage(registry)), runtime=runtime, threads=1)
    init = torch_threads if runtime == "torch" else None
    if init:
        init()
    engine = Engine(follower, Limits(70_000_000, 64), service_metrics(), 3.0, thread_init=init)
    engine.refresh()

    async def classify(request: Request) -> Response:
        try:
            decision = await engine.classify(await Upload(request).one())
        except PistonError as err:
            return error_response(err)
        return Response(decision.model_dump_json(), media_type="application/json")

    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- load generation ------------------------------------------------------------------------

def request_bytes(path: str, body: bytes, content_type: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _one_connection(port: int, payload: bytes, until: float, latencies: list[float],
                          errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(str(status))
    finally:
        writer.close()


def burst(port: int, payload: bytes, concurrency: int, seconds: float,
          into: dict[str, list[float]]) -> None:
    """`concurrency` clients for `seconds`; latencies, wall time and errors added to `into`."""
    async def run() -> None:
        errors: list[str] = []
        start = time.perf_counter()
        until = start + seconds
        await asyncio.gather(*(_one_connection(port, payload, until, into["lat"], errors)
                               for _ in range(concurrency)))
        into["wall"].append(time.perf_counter() - start)
        into["errors"].extend(1.0 for _ in errors)

    asyncio.run(run())


def summary(into: dict[str, list[float]]) -> dict[str, float]:
    lat = np.array(into["lat"]) * 1000
    return {"rps": len(lat) / sum(into["wall"]), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
            "stalls": int((lat > 50).sum()), "errors": len(into["errors"]), "n": len(lat)}


def interleaved(targets: dict[str, tuple[int, bytes]], concurrency: int, seconds: float,
                rounds: int) -> dict[str, dict[str, float]]:
    """Each target driven in `rounds` alternating bursts, so the machine's other load (it
    changes by the second on a shared machine) falls on all of them alike."""
    pooled: dict[str, dict[str, list[float]]] = {
        name: {"lat": [], "wall": [], "errors": []} for name in targets}
    for port, payload in targets.values():
        asyncio.run(_warm(port, payload))
    order = list(targets.items())
    for round_ in range(rounds):  # reversed every other round: no target always goes first
        for name, (port, payload) in order if round_ % 2 == 0 else order[::-1]:
            burst(port, payload, concurrency, seconds / rounds, pooled[name])
    return {name: summary(into) for name, into in pooled.items()}


async def _warm(port: int, payload: bytes) -> None:
    lat: list[float] = []
    await _one_connection(port, payload, time.perf_counter() + 1.0, lat, [])


# -- helpers --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, path: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"server on {port} not up in {seconds} s")


def tree_rss_mb(pid: int) -> list[tuple[str, float]]:
    proc = psutil.Process(pid)
    out = []
    for p in [proc, *proc.children(recursive=True)]:
        cmd = " ".join(p.cmdline()[1:4])[:60]
        out.append((f"{p.pid} {cmd}", p.memory_info().rss / 2**20))
    return out


def ensure_bundle(registry: str, data: str) -> str:
    """The registry's production bundle; trains a quick one into it if there is none."""
    from piston.registry import Registry
    from piston.storage import open_storage

    reg = Registry(open_storage(registry))
    if reg.current() is None:
        from training.config import load_config
        from training.pipeline import GateBar, train_bundle

        print(f"no bundle in {registry}: training one (12 epochs) on {data}", flush=True)
        config = load_config("bn_cnn", overrides={"epochs": 12})
        outcome = train_bundle(data, config, reg, GateBar(),
                               Path(registry).parent / "runs", 40_000_000)
        reg.promote(outcome.version, reason="bench", force=True)
    version = reg.current()
    assert version is not None
    return str(reg.fetch(version))


def without_novelty(model_dir: str, registry: str, work: Path) -> None:
    """The bundle again, with its novelty check left out, as the production bundle of
    `registry`: the same weights, and the same ONNX graph less its `novelty` output (exported
    again from the weights when it has one), so the difference is the novelty check."""
    import torch

    from piston.bundle import META_FILE, WEIGHTS_FILE, create_bundle, new_version, read_meta
    from piston.novelty import NOVELTY_FILE
    from piston.registry import Registry
    from piston.runtime import ONNX_FILE, OnnxRuntime, TorchRuntime
    from piston.storage import open_storage
    from training.onnx_export import export_bundle_onnx

    meta = read_meta(model_dir)
    off = meta.model_copy(update={"novelty": None, "version": new_version(),
                                  "archive_sha256": None})
    kept = {p.name: p for p in Path(model_dir).iterdir()
            if p.name not in {META_FILE, WEIGHTS_FILE, NOVELTY_FILE, "model.yaml"}}
    graph = Path(model_dir) / ONNX_FILE
    if graph.is_file() and OnnxRuntime.load(graph).has_novelty:
        module = TorchRuntime.load(model_dir, meta).module
        kept[ONNX_FILE] = work / f"off-{ONNX_FILE}"
        export_bundle_onnx(module, meta.contract, kept[ONNX_FILE],
                           maps=OnnxRuntime.load(graph).has_maps)
        if off.onnx is not None:
            off = off.model_copy(update={"onnx": off.onnx.model_copy(
                update={"max_novelty_diff": None})})
    state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    create_bundle(off, state, kept)
    reg = Registry(open_storage(registry))
    reg.publish(off.version)
    reg.promote(off.version, reason="bench: novelty off", force=True)


def batch_against_ceiling(ports: dict[str, int], payload: bytes, model_dir: str,
                          images: list[bytes], args: argparse.Namespace,
                          ) -> tuple[dict[tuple[str, int], dict[str, float]], dict[str, float]]:
    """`/classify_batch` of each runtime's server at c=1 and c=2, in bursts alternating with
    each runtime's in-process ceiling (the servers idle meanwhile)."""
    from piston.bundle import Predictor

    predictors = {rt: Predictor.load(model_dir, rt, 1) for rt in args.runtimes}
    pooled: dict[tuple[str, int], dict[str, list[float]]] = {
        (rt, c): {"lat": [], "wall": [], "errors": []} for rt in args.runtimes for c in (1, 2)}
    done = dict.fromkeys(args.runtimes, 0)
    spent = dict.fromkeys(args.runtimes, 0.0)
    for _ in range(args.rounds):
        for rt, predictor in predictors.items():
            for c in (1, 2):
                burst(ports[rt], payload, c, args.duration / args.rounds, pooled[(rt, c)])
            n, t = ceiling(predictor, images, args.duration / args.rounds)
            done[rt], spent[rt] = done[rt] + n, spent[rt] + t
    return ({key: summary(into) for key, into in pooled.items()},
            {rt: done[rt] / spent[rt] for rt in args.runtimes})


def ceiling(predictor: Any, images: list[bytes], seconds: float) -> tuple[int, float]:
    """Images decoded + scored in about `seconds`, batch 32, no HTTP: (images, seconds)."""
    from piston.imaging import preprocess

    batch = (images * 32)[:32]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        arrays = np.stack([preprocess(b, predictor.contract) for b in batch])
        predictor.probabilities(arrays)
        done += len(batch)
    return done, time.perf_counter() - start


def multipart(images: list[bytes], field: str) -> tuple[bytes, str]:
    boundary = "benchboundary7d2f"
    parts = [
        (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{i}.jpg\""
         f"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + img + b"\r\n"
        for i, img in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def measure_levels(targets: dict[str, tuple[int, bytes]],
                   args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
    rows = {}
    for level in args.levels:
        for name, r in interleaved(targets, level, args.duration, args.rounds).items():
            rows[(name, level)] = r
            print(f"{name:11s} c={level:<3d} {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms"
                  f"  p99 {r['p99']:6.2f} ms  max {r['max']:6.1f} ms  >50ms {r['stalls']}"
                  f"  errors {r['errors']}  (n={r['n']})", flush=True)
    return rows


def explain_cost(port: int, image: bytes, args: argparse.Namespace
                 ) -> dict[str, dict[str, float]]:
    """Plain answers and answers with a heatmap from the same server, one client, in
    alternating bursts."""
    targets = {"plain": (port, request_bytes("/classify", image, "image/jpeg")),
               "explain": (port, request_bytes("/classify?explain=true", image, "image/jpeg"))}
    found = interleaved(targets, 1, args.duration, args.rounds)
    for name, r in found.items():
        print(f"{name:7s} c=1   {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms"
              f"  p99 {r['p99']:6.2f} ms  errors {r['errors']}  (n={r['n']})", flush=True)
    return found


def novelty_cost(on: int, off: int, twin: int, payload: bytes, args: argparse.Namespace
                 ) -> dict[str, dict[str, float]]:
    """The same server with and without the novelty check, 32 clients, alternating bursts;
    `twin` is a second server with the check, started after the one without it: on 2 cores
    two identical servers differ by several percent (the first started was the slower), so
    on/twin is the noise floor that on/off is read against."""
    found = interleaved({"on": (on, payload), "off": (off, payload), "twin": (twin, payload)},
                        32, args.duration, args.rounds)
    for name, r in found.items():
        print(f"novelty {name:4s} c=32  {r['rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms"
              f"  p99 {r['p99']:6.2f} ms  errors {r['errors']}  (n={r['n']})", flush=True)
    return found


OFF = "-novelty-off"  # the name suffix of our servers on the bundle without its novelty check
TWIN = "-novelty-twin"  # a second server with the check, started after the one without it


def start_servers(env: dict[str, str], model_dir: str, runtimes: list[RuntimeName],
                  workers: int, off_registry: str
                  ) -> dict[str, tuple[int, subprocess.Popen[bytes]]]:
    """name -> (port, process): `ours-<runtime>` (piston serve), `ours-<runtime>-novelty-off`
    (on `off_registry`), `ours-<runtime>-novelty-twin` (like the first, started after the
    second), `plain-<runtime>`, `naive`."""
    servers = {}
    for rt in runtimes:
        for suffix, registry in (("", env["PISTON_REGISTRY"]), (OFF, off_registry),
                                 (TWIN, env["PISTON_REGISTRY"])):
            port = free_port()
            servers[f"ours-{rt}{suffix}"] = port, subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--workers",
                 str(workers)], cwd=ROOT,
                env={**env, "PISTON_RUNTIME": rt, "PISTON_REGISTRY": registry},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port = free_port()
    servers["naive"] = port, subprocess.Popen(
        [sys.executable, __file__, "--naive-server", str(port), model_dir], cwd=ROOT, env=env,
        start_new_session=True)
    for rt in runtimes:
        port = free_port()
        servers[f"plain-{rt}"] = port, subprocess.Popen(
            [sys.executable, __file__, "--plain-server", str(port), env["PISTON_REGISTRY"], rt],
            cwd=ROOT, env=env, start_new_session=True)
    return servers


def bench_env(prefix: str) -> tuple[str, Path, dict[str, str]]:
    """The data set, a work folder, and an environment with its own BentoML home and registry
    (unless set already), also applied to this process."""
    data = os.environ.get("PISTON_DATA_DIR", str(ROOT.parent / "shared/data/ac-pistons"))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env.setdefault("BENTOML_HOME", str(work / "bentoml"))
    env.setdefault("PISTON_REGISTRY", str(work / "registry"))
    os.environ.update(env)
    return data, work, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=1, help="BentoML worker processes")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=4, help="alternating bursts per level")
    parser.add_argument("--runtimes", nargs="+", choices=("onnx", "torch"),
                        default=["onnx", "torch"], help="PISTON_RUNTIME of our servers")
    parser.add_argument("--naive-server", nargs=2, metavar=("PORT", "MODEL_DIR"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--plain-server", nargs=3, metavar=("PORT", "REGISTRY", "RUNTIME"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        naive_server(int(args.naive_server[0]), args.naive_server[1])
        return
    if args.plain_server:
        plain_server(int(args.plain_server[0]), args.plain_server[1], args.plain_server[2])
        return

    data, work, env = bench_env("piston-bench-")
    model_dir = ensure_bundle(env["PISTON_REGISTRY"], data)
    load_before = os.getloadavg()
    images = [p.read_bytes() for p in sorted(Path(data).glob("*/*.jp*g"))[:64]]

    off_registry = str(work / "registry-novelty-off")
    without_novelty(model_dir, off_registry, work)
    servers = start_servers(env, model_dir, args.runtimes, args.workers, off_registry)
    try:
        for name, (port, proc) in servers.items():
            wait_up(port, "/readyz" if name.startswith("ours") else "/nothing", proc)
        payload = request_bytes("/classify", images[0], "image/jpeg")
        rows = measure_levels({name: (port, payload) for name, (port, _) in servers.items()
                               if not name.endswith((OFF, TWIN))}, args)
        # before the explain bursts: an explain loads torch into the ONNX server's worker
        novelty = {rt: novelty_cost(servers[f"ours-{rt}"][0], servers[f"ours-{rt}{OFF}"][0],
                                    servers[f"ours-{rt}{TWIN}"][0], payload, args)
                   for rt in args.runtimes}
        body, ctype = multipart((images * 32)[:32], "images")
        batch_payload = request_bytes("/classify_batch", body, ctype)
        ours = {rt: servers[f"ours-{rt}"][0] for rt in args.runtimes}
        batch, tops = batch_against_ceiling(ours, batch_payload, model_dir, images, args)
        stats = {rt: __import__("httpx").get(f"http://127.0.0.1:{port}/model").json()["batching"]
                 for rt, port in ours.items()}
        explained = {rt: explain_cost(port, images[0], args) for rt, port in ours.items()}
        rss = {name: tree_rss_mb(proc.pid) for name, (_, proc) in servers.items()}
    finally:
        for _, proc in servers.values():
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nload average before/after: {load_before} / {os.getloadavg()}")
    report(rows, args, batch, tops, stats)
    for rt, found in explained.items():
        e, p = found["explain"], found["plain"]
        print(f"explain / plain /classify, ours-{rt}, c=1 (alternating bursts): req/s"
              f" {e['rps'] / p['rps']:.2f}x  p50 {e['p50'] / p['p50']:.2f}x"
              f"  p99 {e['p99'] / p['p99']:.2f}x")
    for rt, found in novelty.items():
        on, off, twin = found["on"], found["off"], found["twin"]
        print(f"novelty check on / off /classify, ours-{rt}, c=32 (alternating bursts):"
              f" req/s {on['rps'] / off['rps']:.2f}x  p50 {on['p50'] / off['p50']:.2f}x"
              f"  p99 {on['p99'] / off['p99']:.2f}x  (the check adds"
              f" {off['rps'] / on['rps'] - 1:+.1%} time per request; against the twin with"
              f" it, started after the one without: {off['rps'] / twin['rps'] - 1:+.1%};"
              f" two servers with it, on / twin: {twin['rps'] / on['rps'] - 1:+.1%})")
    print("\nresident memory (an API worker is the `_bentoml_impl.worker` process):")
    for label, procs in rss.items():
        for proc_name, mb in procs:
            print(f"  {label:11s} {mb:7.0f} MB  {proc_name}")
        print(f"  {label:11s} {sum(mb for _, mb in procs):7.0f} MB  total")


def report(rows: dict[tuple[str, int], dict[str, float]], args: argparse.Namespace,
           batch: dict[tuple[str, int], dict[str, float]], tops: dict[str, float],
           stats: dict[str, Any]) -> None:
    """The batch figures against the ceilings, and the same-run ratios."""
    torch_top = tops.get("torch")
    for rt, top in tops.items():
        print(f"\nin-process ceiling, {rt} (decode + forward, batch 32): {top:.0f} images/s")
        for c in (1, 2):
            r = batch[(rt, c)]
            print(f"  /classify_batch 32 images, c={c}: {r['rps'] * 32:.0f} images/s"
                  f" ({r['rps'] * 32 / top:.0%} of its ceiling), p50 {r['p50']:.1f} ms")
        print(f"  batching: {stats[rt]}")
    if torch_top:
        for rt, top in tops.items():
            print(f"ceiling {rt} / ceiling torch: {top / torch_top:.2f}x")
    for rt in args.runtimes:
        top = tops[rt]
        print(f"\nratios, ours-{rt} / naive (torch):")
        for level in args.levels:
            o, n = rows[(f"ours-{rt}", level)], rows[("naive", level)]
            p = rows[(f"plain-{rt}", level)]
            vs_torch = f"  of torch ceiling {o['rps'] / torch_top:.0%}" if torch_top else ""
            print(f"  c={level:<3d} req/s {o['rps'] / n['rps']:.2f}x"
                  f"  p50 {o['p50'] / n['p50']:.2f}x  p99 {o['p99'] / n['p99']:.2f}x"
                  f"  of its ceiling {o['rps'] / top:.0%}"
                  f"{vs_torch}  | plain/naive {p['rps'] / n['rps']:.2f}x"
                  f"  | ours/plain (BentoML's share) {o['rps'] / p['rps']:.2f}x"
                  f"  p50 +{o['p50'] - p['p50']:.2f} ms")


if __name__ == "__main__":
    main()
