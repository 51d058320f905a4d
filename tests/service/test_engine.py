"""Method-level tests: the engine, the batcher and the request-size middleware, no server."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from piston.bundle import Predictor
from piston.errors import InputError, NotReady
from piston.follow import ModelFollower
from piston.scoring import Decision, ImageFailure, NetOutput
from service.batching import Batcher
from service.engine import Engine, Limits
from service.limits import RequestSizeLimit
from service.metrics import service_metrics
from tests.conftest import image_bytes
from tests.service.conftest import Bundles, open_registry, sample_images


def make_engine(registry_dir: Path, version: str | None) -> Engine:
    registry = open_registry(registry_dir)
    if version:
        registry.promote(version, reason="test", force=True)
    engine = Engine(ModelFollower(registry), Limits(1_000_000, 8), service_metrics(), 0.2)
    engine.refresh()
    return engine


def test_classify_real_images_matches_in_process_scoring(
        bundles: Bundles, registry_dir: Path, piston_data: Path) -> None:
    engine = make_engine(registry_dir, bundles.good)
    samples = sample_images(piston_data, 6)
    decisions = [asyncio.run(engine.classify(path.read_bytes())) for _, path in samples]
    correct = sum(d.label == label for (label, _), d in zip(samples, decisions, strict=True))
    assert correct >= 0.8 * len(samples)
    assert {d.model_version for d in decisions} == {bundles.good}
    reference = Predictor.load(open_registry(registry_dir).fetch(bundles.good))
    first = decisions[0]
    assert set(first.probabilities) == set(reference.meta.classes)
    assert abs(sum(first.probabilities.values()) - 1) < 1e-5
    assert first.needs_review == (first.confidence < reference.meta.threshold)


def test_batch_keeps_slots_and_reports_the_corrupt_image(
        bundles: Bundles, registry_dir: Path, piston_data: Path) -> None:
    engine = make_engine(registry_dir, bundles.good)
    good = [p.read_bytes() for _, p in sample_images(piston_data, 1)]
    truncated = good[0][: len(good[0]) // 2]
    results = asyncio.run(engine.classify_many([good[0], truncated, b"", good[1], good[2]]))
    assert [isinstance(r, ImageFailure) for r in results] == [False, True, True, False, False]
    assert results[1] == ImageFailure(error=results[1].error, kind="truncated")  # type: ignore[union-attr]
    assert results[2].kind == "empty"  # type: ignore[union-attr]
    alone = asyncio.run(engine.classify(good[1]))
    assert isinstance(results[3], Decision)
    assert results[3].probabilities == pytest.approx(alone.probabilities, abs=1e-5)


def test_not_ready_until_a_bundle_is_in_production(bundles: Bundles, registry_dir: Path) -> None:
    engine = make_engine(registry_dir, None)
    assert not engine.ready
    with pytest.raises(NotReady, match="production"):
        asyncio.run(engine.classify(image_bytes()))
    open_registry(registry_dir).promote(bundles.other, reason="first", force=True)
    assert engine.refresh() and engine.ready
    assert engine.model_info().version == bundles.other


def test_bad_image_raises_input_error_with_status(bundles: Bundles, registry_dir: Path) -> None:
    engine = make_engine(registry_dir, bundles.good)
    cases = {b"not an image": 415, b"": 400, image_bytes(size=(2000, 1000)): 413}
    for data, status in cases.items():
        with pytest.raises(InputError) as err:
            asyncio.run(engine.classify(data))
        assert err.value.status == status


def test_concurrent_requests_share_forward_passes() -> None:
    calls: list[int] = []

    def infer(predictor: object, batch: np.ndarray) -> NetOutput:
        calls.append(len(batch))
        return NetOutput(batch * 2, batch * 3)

    async def run() -> list[NetOutput]:
        batcher = Batcher(infer, max_batch_size=16)  # type: ignore[arg-type]
        model = object()
        rows = [np.full((2,), i, dtype=np.float32) for i in range(40)]
        results = await asyncio.gather(*(batcher.score(model, [r]) for r in rows))  # type: ignore[arg-type]
        batcher.close()
        return list(results)

    results = asyncio.run(run())
    assert [float(r.logits[0][0]) for r in results] == [2.0 * i for i in range(40)]  # own rows
    assert [float(r.features[0][0]) for r in results] == [3.0 * i for i in range(40)]
    assert sum(calls) == 40 and max(calls) == 16 and len(calls) < 40


def test_a_lone_request_to_a_fast_model_skips_the_thread_hops() -> None:
    """Measured fast in the inference thread, the next lone request runs on the event loop;
    requests that arrive together, and any on a slow model (whose forward pass would block
    the loop), go to the inference thread, where they share forward passes."""
    threads: list[str] = []

    def fast(predictor: object, batch: np.ndarray) -> NetOutput:
        threads.append(threading.current_thread().name)
        return NetOutput(batch * 2, batch)

    def slow(predictor: object, batch: np.ndarray) -> NetOutput:
        time.sleep(0.02)  # the work of a large model's forward pass
        return fast(predictor, batch)

    async def run(infer: object) -> tuple[list[NetOutput], dict]:
        batcher = Batcher(infer, max_batch_size=16)  # type: ignore[arg-type]
        model = object()
        lone = [await batcher.score(model, [np.ones(2)]) for _ in range(2)]  # type: ignore[arg-type]
        burst = await asyncio.gather(*(batcher.score(model, [np.full(2, i)]) for i in range(8)))  # type: ignore[arg-type]
        batcher.close()
        return lone + list(burst), batcher.stats()

    results, stats = asyncio.run(run(fast))
    assert threads[0].startswith("infer") and threads[1] == threading.main_thread().name
    assert [float(r.logits[0][0]) for r in results] == [2.0, 2.0, *(2.0 * i for i in range(8))]
    assert stats["inline"] == 1 and stats["images"] == 10  # not the burst: it is batched
    threads.clear()
    results, stats = asyncio.run(run(slow))
    assert stats["inline"] == 0 and all(t.startswith("infer") for t in threads)
    assert [float(r.logits[0][0]) for r in results] == [2.0, 2.0, *(2.0 * i for i in range(8))]


@pytest.mark.parametrize(("method", "inlined"), [("cam", 1), ("grad_cam", 0)])
def test_a_lone_explained_request_skips_the_hops_only_when_its_maps_come_from_one_pass(
    method: str, inlined: int,
) -> None:
    """A CAM comes out of the forward pass itself (the ONNX graph's class maps); Grad-CAM
    needs a backward pass too, which must not block the event loop."""
    threads: list[str] = []

    def infer(predictor: object, batch: np.ndarray, explain: bool = False) -> NetOutput:
        threads.append(threading.current_thread().name)
        return NetOutput(batch * 2, batch, batch[:, None] if explain else None)

    async def run() -> tuple[list[NetOutput], dict]:
        batcher = Batcher(infer, max_batch_size=16)
        model = SimpleNamespace(runtime=SimpleNamespace(explain_method=method))
        plain = await batcher.score(model, [np.ones(2)])  # type: ignore[arg-type]
        explained = await batcher.score(model, [np.ones(2)], explain=True)  # type: ignore[arg-type]
        batcher.close()
        return [plain, explained], batcher.stats()

    (_, explained), stats = asyncio.run(run())
    assert explained.maps is not None
    assert stats["inline"] == inlined
    assert threads[-1] == (threading.main_thread().name if inlined else threads[0])


def test_batches_never_mix_two_models() -> None:
    seen: list[set[int]] = []

    def infer(predictor: object, batch: np.ndarray) -> NetOutput:
        seen.append({id(predictor)})
        rows = np.full((len(batch), 1), id(predictor) % 1000, dtype=np.float64)
        return NetOutput(rows, rows)

    async def run() -> list[float]:
        batcher = Batcher(infer, max_batch_size=64)  # type: ignore[arg-type]
        a, b = object(), object()
        models = [a, b, a, a, b] * 4
        out = await asyncio.gather(*(batcher.score(m, [np.zeros(1)]) for m in models))  # type: ignore[arg-type]
        batcher.close()
        return [float(o.logits[0][0]) for o in out], [id(m) % 1000 for m in models]  # type: ignore[return-value]

    got, wanted = asyncio.run(run())  # type: ignore[misc]
    assert got == wanted


def test_request_size_limit_declared_and_streamed() -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app = RequestSizeLimit(Starlette(routes=[Route("/", echo, methods=["POST"])]),
                           max_bytes=lambda: 1000)
    client = TestClient(app)
    assert client.post("/", content=b"x" * 1000).json() == {"bytes": 1000}
    declared = client.post("/", content=b"x" * 1001)
    assert declared.status_code == 413 and declared.json()["kind"] == "too_large"

    def chunks() -> object:
        for _ in range(10):
            yield b"y" * 300

    streamed = client.post("/", content=chunks())  # type: ignore[arg-type]
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    bad = client.post("/", content=b"x", headers={"content-length": "abc"})
    assert bad.status_code == 400


def test_a_broken_bundle_is_refused_and_the_old_one_keeps_serving(
        bundles: Bundles, registry_dir: Path) -> None:
    engine = make_engine(registry_dir, bundles.good)
    registry = open_registry(registry_dir)
    broken = "20990101-000000-000"
    meta = registry.meta(bundles.good).model_copy(update={"version": broken})
    registry.storage.write(f"bundles/{broken}.json", meta.model_dump_json().encode())
    registry.storage.write(f"bundles/{broken}.bentomodel", b"not a model archive")
    registry.promote(broken, reason="a bad upload", force=True)
    assert engine.refresh() is False
    info = engine.model_info()
    assert info.version == bundles.good and broken in info.refused
    assert broken in (info.last_error or "")
    assert asyncio.run(engine.classify(image_bytes())).model_version == bundles.good
    registry.rollback(reason="back to good")
    assert engine.refresh() is False and engine.model_info().version == bundles.good


async def _post(app: RequestSizeLimit, size: int) -> tuple[int, dict[bytes, bytes]]:
    """One request with a `size`-byte body straight through the ASGI middleware."""
    chunks = [{"type": "http.request", "body": b"x" * size, "more_body": False}]
    answer: dict[str, object] = {}

    async def receive() -> dict[str, object]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            answer.update(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (b"content-length", str(size).encode())]}
    await app(scope, receive, send)
    return int(answer["status"]), dict(answer["headers"])  # type: ignore[call-overload]


def test_request_bodies_in_flight_have_a_budget_then_503_with_retry_after() -> None:
    release = asyncio.Event()

    async def slow(scope: dict[str, object], receive: object, send: object) -> None:
        while (await receive())["more_body"]:  # type: ignore[operator]
            pass
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def run() -> list[int]:
        app = RequestSizeLimit(slow, max_bytes=lambda: 1000, budget=lambda: 1500)
        first = asyncio.create_task(_post(app, 800))
        while app.in_flight != 800:
            await asyncio.sleep(0)
        status, headers = await _post(app, 800)  # does not fit beside the first: refused
        assert status == 503 and headers[b"retry-after"] == b"1"
        small = asyncio.create_task(_post(app, 600))  # fits
        while app.in_flight != 1400:
            await asyncio.sleep(0)
        release.set()
        statuses = [(await first)[0], (await small)[0]]
        assert app.in_flight == 0
        alone = RequestSizeLimit(slow, max_bytes=lambda: 1000, budget=lambda: 10)
        statuses.append((await _post(alone, 900))[0])  # the first always fits
        return statuses

    assert asyncio.run(run()) == [200, 200, 200]


def test_inline_decoding_is_chosen_by_bytes_as_well_as_pixels() -> None:
    import io

    from PIL import Image, PngImagePlugin

    from piston.errors import Overloaded
    from piston.imaging import Contract
    from service.decoding import Decoder
    from service.engine import INLINE_DECODE_BYTES

    info = PngImagePlugin.PngInfo()
    info.add_text("padding", "p" * (2 * INLINE_DECODE_BYTES))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG", pnginfo=info)
    heavy, light = buf.getvalue(), image_bytes(size=(64, 64))
    assert len(heavy) > INLINE_DECODE_BYTES > len(light)
    decoder = Decoder(10**8, 512 * 512, threads=1, queue=0, inline_bytes=INLINE_DECODE_BYTES)
    decoder.pending = decoder.capacity  # every decode thread busy: only inline work proceeds
    contract = Contract(height=32, width=32)
    try:
        assert asyncio.run(decoder(light, contract)).shape == (3, 32, 32)
        with pytest.raises(Overloaded):  # 4096 pixels, but 2 MB: sent to the threads
            asyncio.run(decoder(heavy, contract))
    finally:
        decoder.close()


def test_a_batch_with_one_explain_request_runs_with_maps_and_only_it_keeps_them() -> None:
    calls: list[tuple[int, bool]] = []

    def infer(predictor: object, batch: np.ndarray, explain: bool = False) -> NetOutput:
        calls.append((len(batch), explain))
        maps = np.ones((len(batch), 2, 3, 3), dtype=np.float32) if explain else None
        return NetOutput(batch * 2, batch * 3, maps)

    async def run() -> list[NetOutput]:
        batcher = Batcher(infer, max_batch_size=16)  # type: ignore[arg-type]
        model = object()
        rows = [np.full((2,), i, dtype=np.float32) for i in range(6)]
        results = await asyncio.gather(*(batcher.score(model, [r], explain=i == 3)  # type: ignore[arg-type]
                                         for i, r in enumerate(rows)))
        batcher.close()
        return list(results)

    results = asyncio.run(run())
    assert [r.maps is not None for r in results] == [False, False, False, True, False, False]
    assert results[3].maps is not None and results[3].maps.shape == (1, 2, 3, 3)
    assert any(explain for _, explain in calls) and sum(n for n, _ in calls) == 6
