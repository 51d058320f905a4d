"""What BentoML adds per `/classify` request, in-process: CPU microseconds per layer.

    python bench/bento_share.py [--requests 3000] [--runtime onnx] [--profile]

Builds the service's real ASGI app (`PistonInspector.to_asgi()`, the app a BentoML worker
serves), runs its lifespan, and sends it `/classify` requests one after another straight
through ASGI (no sockets, no HTTP parsing: uvicorn's share is the same for any ASGI app). It
measures the CPU time per request of: the engine alone (decode + forward + decide), the
whole app; then, with the engine's answer stubbed (the model's cost and noise out of the
way), the whole app, and each middleware alone in front of an ASGI app that does nothing
(less that app alone: the layer's own cost), and the routing with BentoML's API wrapper and
our route. Rounds alternate so the machine's other load falls on all alike. `--profile`
adds a cProfile of the whole app's requests, by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Message = dict[str, Any]
App = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
               Coroutine[Any, Any, None]]


async def lifespan(app: App) -> asyncio.Task[None]:
    """Start the app's lifespan (creates the service instance); returns the task to keep."""
    started = asyncio.Event()
    messages = [{"type": "lifespan.startup"}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # never shut down during the run
        return {}

    async def send(message: Message) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                   receive, send))
    await started.wait()
    return task


async def request(app: App, *, path: str, body: bytes, content_type: str,
                  starlette: Any) -> int:
    """One POST through ASGI, as uvicorn would call Starlette (`app`: its middleware chain);
    returns the status."""
    scope = {"app": starlette, "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 3000),
             "headers": [(b"host", b"127.0.0.1:3000"), (b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode())], "state": {}}
    sent = False
    status = 0
    answered = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()  # as uvicorn: a disconnect only once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    await app(scope, receive, send)
    return status


def layers(app: Any) -> list[Any]:
    """The app's middleware chain as built (outermost first), down to its router."""
    from starlette.routing import Router

    chain, node = [], app.middleware_stack
    while not isinstance(node, Router):
        chain.append(node)
        node = node.app
    return chain


def alone(layer: Any, inner: App) -> Any:
    """`layer` (a copy: its metrics registered once) in front of `inner` only."""
    import copy

    clone = copy.copy(layer)
    clone.app = inner
    return clone


async def answer(scope: Message, receive: Callable[[], Awaitable[Message]],
                 send: Callable[[Message], Awaitable[None]]) -> None:
    """The least an ASGI app can do: read the body, answer 200 with a few bytes."""
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def run(args: argparse.Namespace) -> None:
    import bentoml

    from piston.scoring import Decision
    from service.app import PistonInspector

    app = PistonInspector.to_asgi()
    keep = await lifespan(app)
    deadline = time.monotonic() + 120
    while not (bentoml.get_current_service() and bentoml.get_current_service().engine.ready):
        assert time.monotonic() < deadline, "the service never became ready"
        await asyncio.sleep(0.1)
    svc = bentoml.get_current_service()
    engine = svc.engine
    data = os.environ.get("PISTON_DATA_DIR", str(ROOT.parent / "shared/data/ac-pistons"))
    body = sorted(Path(data).glob("*/*.jp*g"))[0].read_bytes()
    post = functools.partial(request, path="/classify", body=body, content_type="image/jpeg",
                             starlette=app)
    await post(app)  # builds the middleware stack
    chain = layers(app)
    names = [type(layer).__name__ for layer in chain]

    measured = await measure({"engine alone": lambda: engine.classify(body),
                              "whole app": lambda: post(chain[0])}, args)
    canned: Decision = await engine.classify(body)

    async def stub(data: bytes, explain: bool = False) -> Decision:
        return canned

    engine.classify = stub  # the model out of the way: the HTTP stack's own cost
    stack: dict[str, Callable[[], Awaitable[Any]]] = {
        "whole app, model stubbed": lambda: post(chain[0]),
        "ASGI app doing nothing": lambda: post(answer)}
    for i, name in enumerate(names):
        if name == "ContextMiddleware":  # the API wrapper reads the context it sets
            stack["routing + BentoML's API wrapper + our route"] = functools.partial(
                post, alone(chain[i], chain[i].app))
            stack[name] = functools.partial(post, alone(chain[i], answer))
        else:
            stack[name] = functools.partial(post, alone(chain[i], answer))
    costs = await measure(stack, args)
    base = costs.pop("ASGI app doing nothing")
    print(f"runtime {engine.predictor().runtime.name}, {args.requests} requests per variant,"
          f" load average {os.getloadavg()}; CPU microseconds per /classify request")
    print(f"  engine alone (decode + forward + decide) {measured['engine alone']:7.0f}")
    print(f"  whole app                                {measured['whole app']:7.0f}"
          f"  (+{measured['whole app'] - measured['engine alone']:.0f})")
    stubbed = costs.pop("whole app, model stubbed")
    print(f"  whole app, model stubbed                 {stubbed:7.0f}")
    print("  each layer alone, over an app doing nothing:")
    for name, us in costs.items():
        print(f"    {name:46s} {us - base:7.0f}")
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.requests // args.rounds):
            await post(chain[0])
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    keep.cancel()


async def measure(variants: dict[str, Callable[[], Awaitable[Any]]],
                  args: argparse.Namespace) -> dict[str, float]:
    """CPU microseconds per call of each variant, in alternating rounds."""
    for call in variants.values():  # warm up (the lone-request path measures the model)
        for _ in range(50):
            await call()
    cpu = dict.fromkeys(variants, 0.0)
    per_round = args.requests // args.rounds
    for _ in range(args.rounds):
        for name, call in variants.items():
            start = time.process_time()
            for _ in range(per_round):
                await call()
            cpu[name] += time.process_time() - start
    return {name: t / (per_round * args.rounds) * 1e6 for name, t in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    # as in a BentoML worker: metrics go to files shared by the workers (set before import)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prom-"))
    from bench.serve import bench_env, ensure_bundle

    data, _, env = bench_env("piston-bento-share-")
    ensure_bundle(env["PISTON_REGISTRY"], data)
    os.environ["PISTON_RUNTIME"] = args.runtime
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
