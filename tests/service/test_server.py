"""A real `piston serve` (BentoML, 2 workers) on 127.0.0.1 with bundles trained on the data."""

from __future__ import annotations

import io
import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from piston.bundle import Predictor
from piston.imaging import preprocess
from piston.scoring import decide
from tests.conftest import image_bytes
from tests.service.conftest import Bundles, open_registry, running_server, sample_images

POLL_S = 0.5
TOKEN = "server-token-of-24-chars-or-more"


@pytest.fixture(scope="module")
def served(bundles: Bundles,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("served")
    registry_dir = root / "registry"
    shutil.copytree(bundles.registry, registry_dir)
    open_registry(registry_dir).promote(bundles.good, reason="serve", force=True)
    env = {"PISTON_REGISTRY": str(registry_dir), "PISTON_POLL_INTERVAL_S": str(POLL_S),
           "PISTON_ADMIN_TOKEN": TOKEN, "PISTON_MAX_UPLOAD_BYTES": "1000000",
           "PISTON_MAX_BATCH_IMAGES": "16"}
    with running_server("source", env, root / "server.log", workers=2) as url:
        yield url, registry_dir


def test_classifies_real_images_like_the_bundle_does(
        served: tuple[str, Path], bundles: Bundles, piston_data: Path) -> None:
    url, registry_dir = served
    predictor = Predictor.load(open_registry(registry_dir).fetch(bundles.good))
    samples = sample_images(piston_data, 5)
    correct = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, (label, path) in enumerate(samples):
            data = path.read_bytes()
            if i % 2:
                response = client.post("/classify",
                                       files={"image": (path.name, data, "image/jpeg")})
            else:
                response = client.post("/classify", content=data,
                                       headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
            result = response.json()
            expected = decide(
                predictor, predictor.forward(preprocess(data, predictor.contract)[None]))[0]
            assert result["label"] == expected.label
            assert result["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
            assert result["model_version"] == bundles.good
            correct += result["label"] == label
    assert correct >= 0.8 * len(samples)


def test_batch_with_one_corrupt_image(served: tuple[str, Path], piston_data: Path) -> None:
    url, _ = served
    good = [p.read_bytes() for _, p in sample_images(piston_data, 2)]
    corrupt = good[0][: len(good[0]) // 2]
    files = [("images", (f"{i}.jpg", d, "image/jpeg"))
             for i, d in enumerate([*good[:3], corrupt, *good[3:]])]
    response = httpx.post(f"{url}/classify_batch", files=files, timeout=30)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 7
    assert [("label" in r) for r in results] == [True, True, True, False, True, True, True]
    assert results[3]["kind"] == "truncated"
    labels = [r["label"] for r in results if "label" in r]
    assert len(set(labels)) >= 2  # different classes, not one answer for all


def noisy_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_bad_input_table(served: tuple[str, Path]) -> None:
    url, _ = served
    jpeg = {"content-type": "image/jpeg"}
    noisy = noisy_jpeg()
    table = [
        ("empty body", {"content": b"", "headers": jpeg}, 400),
        ("not an image", {"content": b"%PDF-1.4 not an image", "headers": jpeg}, 415),
        ("truncated", {"content": noisy[: len(noisy) // 2], "headers": jpeg}, 422),
        ("oversize declared", {"content": b"\xff" * 1_200_000, "headers": jpeg}, 413),
        ("oversize chunked", {"content": chunked(b"\xff" * 1_200_000), "headers": jpeg}, 413),
        ("wrong content type", {"content": b"{}",
                                "headers": {"content-type": "application/json"}}, 415),
        ("wrong field", {"files": {"file": ("a.jpg", image_bytes(), "image/jpeg")}}, 400),
        ("no content type", {"content": image_bytes(), "headers": {"content-type": ""}}, 415),
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, request, status in table:
            response = client.post("/classify", **request)  # type: ignore[arg-type]
            assert response.status_code == status, (name, response.status_code, response.text)
            assert response.json()["error"], name
        blank = client.post("/classify", content=image_bytes(), headers=jpeg)
        assert blank.status_code == 200
        assert (blank.json()["novel"], blank.json()["review_reason"]) == (True, "novel")
        assert client.post("/admin/reload").status_code == 401
        metrics = client.get("/metrics").text
    for kind in ("empty", "not_an_image", "truncated", "unsupported_media_type"):
        assert f'piston_request_errors_total{{kind="{kind}"}}' in metrics, kind
    assert "piston_predictions_total{label=" in metrics, metrics
    assert "piston_novel_total{model_version=" in metrics, metrics  # the blank image
    assert "bentoml_service_request_total" in metrics  # BentoML's built-ins are still there


def serving_versions(url: str) -> set[str]:
    """The version each worker process reports in /metrics (1 = serving)."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return {line.split('version="')[1].split('"')[0] for line in lines
            if line.startswith("piston_serving_model{") and line.endswith(" 1.0")}


def test_promote_and_roll_back_under_load(served: tuple[str, Path], bundles: Bundles) -> None:
    url, registry_dir = served
    registry = open_registry(registry_dir)
    log: list[tuple[float, float, str]] = []  # (sent, answered, version)
    failures: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = image_bytes()
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post("/classify", content=body,
                                           headers={"content-type": "image/jpeg"})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text}")
                        continue
                    log.append((sent, time.monotonic(), response.json()["model_version"]))
                except httpx.HTTPError as err:
                    failures.append(repr(err))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        switches = []
        for target, move in ((bundles.other, "promote"), (bundles.good, "rollback")):
            moved_at = time.monotonic()
            if move == "promote":
                registry.promote(target, reason="under load", force=True)
            else:
                registry.rollback(reason="roll back under load")
            deadline = moved_at + 30
            while serving_versions(url) != {target}:
                assert time.monotonic() < deadline, f"workers still on {serving_versions(url)}"
                time.sleep(0.05)
            switched_at = time.monotonic()  # every worker serves the target from here on
            while not [v for sent, _, v in list(log) if sent > switched_at]:
                assert time.monotonic() < deadline, "no request answered after the switch"
                time.sleep(0.05)
            later = {v for sent, _, v in list(log) if sent > switched_at}
            assert later == {target}
            first_new = min(answered for _, answered, v in log if v == target
                            and answered > moved_at)
            switches.append(first_new - moved_at)
    finally:
        stop.set()
        for t in threads:
            t.join()
    logging.getLogger(__name__).info("%d requests, switch after move: %s s", len(log),
                                     [round(x, 3) for x in switches])
    assert failures == []
    assert len(log) > 50
    # the new bundle answers within the poll interval plus its load (generous: a busy machine)
    assert max(switches) < POLL_S + 10.0, switches
    history = registry.history()
    assert [m.action for m in history[-2:]] == ["promote", "rollback"]


def test_the_bentoml_client_calls_every_api(served: tuple[str, Path], bundles: Bundles,
                                            piston_data: Path, tmp_path: Path) -> None:
    url, _ = served
    paths = [p for _, p in sample_images(piston_data, 1)]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"%PDF-1.4 not an image")
    with bentoml.SyncHTTPClient(url, timeout=60) as client:
        one = client.classify(image=paths[0])
        batch = client.classify_batch(images=[*paths, not_an_image])
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.classify(image=not_an_image)
    assert one["model_version"] == bundles.good and one["label"] in one["probabilities"]
    results = batch["results"]
    assert [r["label"] == one["label"] for r in results[:1]] == [True]
    assert results[-1]["kind"] == "not_an_image" and results[-1]["status"] == 415
    assert refused.value.error_code == 415
    model = httpx.get(f"{url}/model", timeout=10).json()
    assert model["version"] == bundles.good
    spec = httpx.get(f"{url}/docs.json", timeout=10).json()
    assert {"/classify", "/classify_batch", "/model", "/admin/models"} <= set(spec["paths"])


def test_a_photo_stored_rotated_scores_like_one_rotated_by_hand(
        served: tuple[str, Path], piston_data: Path) -> None:
    url, _ = served
    _, path = sample_images(piston_data, 1)[0]
    upright = Image.open(path).convert("RGB").resize((160, 120))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the camera's sensor order
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view"
    tagged, plain = io.BytesIO(), io.BytesIO()
    stored.save(tagged, format="JPEG", quality=98, exif=exif)
    upright.save(plain, format="JPEG", quality=98)
    jpeg = {"content-type": "image/jpeg"}
    with httpx.Client(base_url=url, timeout=30) as client:
        a = client.post("/classify", content=tagged.getvalue(), headers=jpeg).json()
        b = client.post("/classify", content=plain.getvalue(), headers=jpeg).json()
    assert a["label"] == b["label"]
    for label, p in b["probabilities"].items():
        assert abs(a["probabilities"][label] - p) < 0.05, (a, b)


def test_an_oversize_multipart_upload_reads_as_413_in_urllib(served: tuple[str, Path]) -> None:
    url, _ = served
    boundary = "x7d2f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\";"
            f" filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    body += b"\xff" * (20 * 1000 * 1000) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/classify", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    answer = json.loads(refused.value.read())
    assert answer["kind"] == "too_large" and "limit" in answer["error"]
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
