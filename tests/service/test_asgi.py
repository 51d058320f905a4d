"""ASGI tests: BentoML's own app for the service (middleware, probes, metrics) in-process."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from piston import jobs
from piston.bundle import read_meta
from tests.conftest import image_bytes, own_redis
from tests.service.conftest import Bundles, open_registry

TOKEN = "test-admin-token-of-24-chars-or-more"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REDIS = own_redis(14)  # its own database: the queue tests read it


@pytest.fixture(scope="module")
def asgi_app() -> Any:
    """BentoML's ASGI app for the service, built once (its metrics register once a process);
    each test's client runs its lifespan, which creates a fresh service instance."""
    from service.app import PistonInspector

    return PistonInspector.to_asgi()


def serve_in_process(asgi_app: Any, registry: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("PISTON_REGISTRY", str(registry))
    # jobs may use the test's folder (the registry's parent, which holds the registry too)
    monkeypatch.setenv("PISTON_JOB_ROOTS", json.dumps([str(registry.parent)]))
    monkeypatch.setenv("PISTON_RETRAIN_DATASET_ROOTS", '["s3://bucket"]')
    monkeypatch.setenv("PISTON_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("PISTON_POLL_INTERVAL_S", "0.2")
    monkeypatch.setenv("PISTON_MAX_UPLOAD_BYTES", "300000")
    monkeypatch.setenv("PISTON_MAX_BATCH_IMAGES", "4")
    monkeypatch.setenv("PISTON_REDIS_URL", REDIS)
    with TestClient(asgi_app) as test_client:
        yield test_client


@pytest.fixture
def client(asgi_app: Any, registry_dir: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The service on a registry holding the session's two real bundles."""
    yield from serve_in_process(asgi_app, registry_dir, monkeypatch)


@pytest.fixture
def bare_client(asgi_app: Any, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The service on an empty registry: no model, every other route (the fast tier)."""
    yield from serve_in_process(asgi_app, tmp_path / "registry", monkeypatch)


def assert_matches_its_schema(client: TestClient, method: str, path: str,
                              answer: Any) -> None:
    """`answer` is valid against the 200 schema /docs.json gives for `method path`."""
    import jsonschema

    spec = client.get("/docs.json").json()
    operation = spec["paths"][path][method.lower()]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(answer, {**schema, "components": spec["components"]})


def wait_ready(client: TestClient, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.1)


def encoded(mode: str, fmt: str, size: tuple[int, int] = (120, 90)) -> bytes:
    img = Image.new("RGB", size, (90, 140, 200)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_not_ready_without_a_bundle_then_follows_the_pointer(
        client: TestClient, bundles: Bundles, registry_dir: Path) -> None:
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = client.post("/classify", files={"image": ("a.jpg", image_bytes(), "image/jpeg")})
    assert response.status_code == 503 and response.json()["kind"] == "not_ready"
    open_registry(registry_dir).promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    model = client.get("/model").json()
    assert model["version"] == bundles.good and isinstance(model["gates_passed"], bool)
    assert set(model["classes"]) == {"defect_1", "defect_2", "normal"}
    assert {g["name"] for g in model["gates"]} and "accuracy" in model["metrics"]
    # the review band as the bundle holds it: the global threshold and each class's own
    meta = read_meta(open_registry(registry_dir).fetch(bundles.good))
    assert model["threshold"] == meta.calibration.threshold
    assert model["class_thresholds"] == meta.calibration.class_thresholds


def test_inputs_in_every_mode_and_the_bad_input_table(
        client: TestClient, bundles: Bundles, registry_dir: Path) -> None:
    open_registry(registry_dir).promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    for mode, fmt in [("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"),
                      ("I;16", "PNG"), ("RGB", "BMP"), ("RGB", "WEBP"), ("RGB", "TIFF")]:
        response = client.post("/classify", content=encoded(mode, fmt),
                               headers={"content-type": f"image/{fmt.lower()}"})
        assert response.status_code == 200, (mode, fmt, response.text)
        assert response.json()["model_version"] == bundles.good
    truncated = encoded("RGB", "PNG", (200, 200))[:300]
    too_many_pixels = encoded("L", "PNG", (9000, 9000))  # small file, huge canvas
    ico = io.BytesIO()
    Image.new("RGB", (32, 32)).save(ico, format="ICO")
    table = [
        ("empty body", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400),
        ("not an image", {"content": b"hello", "headers": {"content-type": "image/png"}}, 415),
        ("ico not allowed", {"content": ico.getvalue(),
                             "headers": {"content-type": "image/x-icon"}}, 415),
        ("truncated", {"content": truncated, "headers": {"content-type": "image/png"}}, 422),
        ("pixel bomb", {"content": too_many_pixels,
                        "headers": {"content-type": "image/png"}}, 413),
        ("oversize upload", {"content": b"\xff" * 400_000,
                             "headers": {"content-type": "image/jpeg"}}, 413),
        ("json body", {"json": {"image": "abc"}}, 415),
        ("wrong field", {"files": {"picture": ("a.jpg", image_bytes(), "image/jpeg")}}, 400),
        ("text field", {"data": {"image": "not a file"}}, 400),
    ]
    for name, request, status in table:
        response = client.post("/classify", **request)  # type: ignore[arg-type]
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"], name
    assert client.post("/classify", content=image_bytes(),
                       headers={"content-type": "image/jpeg"}).status_code == 200  # still serving


def test_classify_batch_slots_and_limit(client: TestClient, bundles: Bundles,
                                        registry_dir: Path) -> None:
    open_registry(registry_dir).promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    files = [("images", (f"{i}.jpg", data, "image/jpeg"))
             for i, data in enumerate([image_bytes(), b"garbage", image_bytes((10, 200, 10))])]
    results = client.post("/classify_batch", files=files).json()["results"]
    assert [("label" in r) for r in results] == [True, False, True]
    assert results[1]["kind"] == "not_an_image"
    five = [("images", (f"{i}.jpg", image_bytes(), "image/jpeg")) for i in range(5)]
    response = client.post("/classify_batch", files=five)
    assert response.status_code == 413 and "at most 4" in response.json()["error"]
    response = client.post("/classify_batch", content=image_bytes(),
                           headers={"content-type": "image/jpeg"})
    assert response.status_code == 415


def test_admin_needs_the_token_and_moves_the_pointer(
        client: TestClient, bundles: Bundles, registry_dir: Path) -> None:
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    body = {"version": bundles.other, "reason": "try the other", "force": True,
            "expected": bundles.good}
    assert client.post("/admin/promote", json=body).status_code == 401
    assert client.post("/admin/promote", json=body,
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    if not registry.meta(bundles.other).gates_passed:  # otherwise this would promote it
        refused = client.post("/admin/promote", json={"version": bundles.other, "reason": "x",
                                                       "expected": bundles.good}, headers=AUTH)
        assert refused.status_code == 409 and "gates" in refused.json()["error"]
    assert client.post("/admin/promote", json={"reason": "no version", "expected": "none"},
                       headers=AUTH).status_code == 422
    no_expected = client.post("/admin/promote", json={**body, "expected": None}, headers=AUTH)
    assert no_expected.status_code == 422 and "expected" in no_expected.json()["error"]
    unknown = client.post("/admin/promote", json={"version": "20990101-000000-000",
                                                  "reason": "typo", "expected": bundles.good},
                          headers=AUTH)
    assert unknown.status_code == 404 and "no bundle" in unknown.json()["error"]
    stale = client.post("/admin/promote", json={**body, "expected": bundles.other}, headers=AUTH)
    assert stale.status_code == 409 and stale.json()["kind"] == "stale"
    assert registry.current() == bundles.good  # a stale move changes nothing
    promoted = client.post("/admin/promote", json=body, headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["serving"] == bundles.other  # this worker swapped at once
    image = {"image": ("a.jpg", image_bytes(), "image/jpeg")}
    assert client.post("/classify", files=image).json()["model_version"] == bundles.other
    rolled = client.post("/admin/rollback", json={"reason": "worse", "expected": bundles.other},
                         headers=AUTH)
    assert rolled.status_code == 200 and rolled.json()["serving"] == bundles.good
    assert registry.history()[-1].reason == "worse" and registry.history()[-1].by == "admin-api"
    reload = client.post("/admin/reload", headers=AUTH).json()
    assert reload == {"swapped": False, "serving": bundles.good, "last_error": None}


def test_retrain_is_queued_and_its_status_readable(bare_client: TestClient) -> None:
    client = bare_client
    body = {"dataset": "s3://bucket/pistons", "overrides": {"epochs": 3},
            "promote_if_better": True}
    assert client.post("/admin/retrain", json=body).status_code == 401
    assert client.post("/admin/retrain", json={"overrides": 3}, headers=AUTH).status_code == 422
    queued = client.post("/admin/retrain", json=body, headers=AUTH)
    assert queued.status_code == 200, queued.text
    job_id = queued.json()["job_id"]
    assert_matches_its_schema(client, "POST", "/admin/retrain", queued.json())
    status = client.get(f"/jobs/{job_id}", headers=AUTH).json()
    assert_matches_its_schema(client, "GET", "/jobs/{job_id}", status)
    assert status["job_id"] == job_id and status["state"] == jobs.JobState.PENDING
    assert status["kind"] == "retrain" and status["dataset"] == "s3://bucket/pistons"
    assert client.get("/jobs/no-such-job", headers=AUTH).status_code == 404
    import redis

    queue = redis.Redis.from_url(REDIS)
    try:
        assert any(job_id.encode() in m for m in queue.lrange(jobs.RETRAIN_QUEUE, 0, -1))
    finally:
        queue.delete(jobs.RETRAIN_QUEUE)


def test_admin_is_refused_without_a_configured_token(
        asgi_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PISTON_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.delenv("PISTON_ADMIN_TOKEN", raising=False)
    with TestClient(asgi_app) as client:
        response = client.post("/admin/reload", headers={"Authorization": "Bearer "})
        assert response.status_code == 403 and "PISTON_ADMIN_TOKEN" in response.json()["error"]


def test_batchable_infer_api_scores_preprocessed_arrays(
        client: TestClient, bundles: Bundles, registry_dir: Path) -> None:
    open_registry(registry_dir).promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    arrays = [[[[0.5] * 80] * 80] * 3] * 2
    response = client.post("/infer", json={"batch": arrays})
    assert response.status_code == 200, response.text
    probs = response.json()
    assert len(probs) == 2 and all(abs(sum(row) - 1) < 1e-4 for row in probs)
    wrong = client.post("/infer", json={"batch": [[[[0.5] * 10] * 10] * 3]})
    assert wrong.status_code == 400 and "shape" in wrong.text


def test_admin_lists_bundles_and_history_with_kinds_on_errors(
        client: TestClient, bundles: Bundles, registry_dir: Path) -> None:
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="first", force=True)
    refused = client.get("/admin/models")
    assert refused.status_code == 401 and refused.json()["kind"] == "unauthorized"
    listing = client.get("/admin/models", headers=AUTH).json()
    assert_matches_its_schema(client, "GET", "/admin/models", listing)
    assert listing["production"] == bundles.good
    rows = {row["version"]: row for row in listing["bundles"]}
    assert set(rows) == {bundles.good, bundles.other}
    assert rows[bundles.good]["production"] and not rows[bundles.other]["production"]
    assert rows[bundles.good]["gates"] and "accuracy" in rows[bundles.good]["metrics"]
    assert rows[bundles.good]["gates_passed"] == registry.meta(bundles.good).gates_passed
    moved = client.post("/admin/promote", json={"version": bundles.other, "reason": "try",
                                                 "force": True, "expected": bundles.good},
                        headers=AUTH)
    assert moved.status_code == 200, moved.text
    assert_matches_its_schema(client, "POST", "/admin/promote", moved.json())
    history = client.get("/admin/history", headers=AUTH).json()
    assert_matches_its_schema(client, "GET", "/admin/history", history)
    assert history["production"] == bundles.other
    assert [(m["action"], m["version"]) for m in history["moves"]] == [
        ("promote", bundles.good), ("promote", bundles.other)]
    unknown = client.post("/admin/promote", json={"version": "20990101-000000-000",
                                                  "reason": "typo", "expected": bundles.other},
                          headers=AUTH)
    assert unknown.status_code == 404 and unknown.json()["kind"] == "not_found"
    again = client.post("/admin/promote", json={"version": bundles.other, "reason": "twice",
                                                "force": True, "expected": bundles.other},
                        headers=AUTH)
    assert again.status_code == 409 and again.json()["kind"] == "conflict"
    invalid = client.post("/admin/rollback", json={"reason": "", "expected": bundles.other},
                          headers=AUTH)
    assert invalid.status_code == 422 and invalid.json()["kind"] == "invalid_body"


def test_score_job_is_queued_like_the_cli(bare_client: TestClient, tmp_path: Path) -> None:
    client = bare_client
    (tmp_path / "images").mkdir()
    body = {"src": str(tmp_path / "images"), "out": str(tmp_path / "out"), "only_new": True}
    assert client.post("/jobs/score", json=body).status_code == 401
    relative = client.post("/jobs/score", json={**body, "src": "images"}, headers=AUTH)
    assert relative.status_code == 403 and relative.json()["kind"] == "forbidden"
    (tmp_path / "file").write_text("x")
    a_file = client.post("/jobs/score", json={**body, "src": str(tmp_path / "file")}, headers=AUTH)
    assert a_file.status_code == 422 and a_file.json()["kind"] == "invalid_body"
    queued = client.post("/jobs/score", json=body, headers=AUTH)
    assert queued.status_code == 200, queued.text
    job_id = queued.json()["job_id"]
    status = client.get(f"/jobs/{job_id}", headers=AUTH).json()
    assert status["kind"] == "score" and status["src"] == str(tmp_path / "images")
    import redis

    queue = redis.Redis.from_url(REDIS)
    try:
        sent = [m for m in queue.lrange(jobs.SCORE_QUEUE, 0, -1) if job_id.encode() in m]
        assert sent and b"only_new" in sent[0]
    finally:
        queue.delete(jobs.SCORE_QUEUE)


def test_api_methods_are_bound_once(bare_client: TestClient) -> None:
    """BentoML looks each API method up on the instance per request: the lookup gives the
    one bound method, not a new one (whose signature BentoML's descriptor rebuilds), and a
    request through it is still answered by our route (415 with our JSON shape)."""
    import bentoml

    svc = bentoml.get_current_service()
    assert svc is not None
    for name in ("classify", "classify_batch", "infer"):
        assert getattr(svc, name) is getattr(svc, name), name
        assert getattr(svc, name).local is getattr(svc, name), name
    answer = bare_client.post("/classify", content=b"x", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415 and answer.json()["kind"] == "unsupported_media_type"


def test_docs_json_documents_every_route(bare_client: TestClient) -> None:
    client = bare_client
    page = client.get("/")
    assert page.status_code == 200 and "<title>piston-inspector</title>" in page.text
    spec = client.get("/docs.json").json()
    assert spec["info"]["title"] == "piston-inspector" and spec["info"]["version"] != "None"
    assert "curl" in spec["info"]["description"]
    paths = spec["paths"]
    classify = paths["/classify"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(classify["requestBody"]["content"])
    assert {"200", "413", "415", "503"} <= set(classify["responses"])
    assert "multipart/form-data" in paths["/classify_batch"]["post"]["requestBody"]["content"]
    assert "get" in paths["/model"]
    for path in ("/admin/models", "/admin/history", "/admin/promote", "/jobs/score",
                 "/jobs/{job_id}"):
        operation = next(iter(paths[path].values()))
        assert operation["security"] == [{"adminToken": []}], path
    answer = classify["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"label", "probabilities", "model_version"} <= set(answer["properties"])
    schemas = spec["components"]["schemas"]
    assert {"ClassifyInput", "ModelsAnswer", "HistoryAnswer", "ErrorAnswer"} <= set(schemas)


def test_answers_match_the_schemas_docs_json_gives_them(bare_client: TestClient) -> None:
    """The answers are built from the models /docs.json is generated from: they cannot drift."""
    client = bare_client
    answers = {("GET", "/model"): client.get("/model", headers=AUTH),  # with its details
               ("GET", "/admin/models"): client.get("/admin/models", headers=AUTH),
               ("GET", "/admin/history"): client.get("/admin/history", headers=AUTH),
               ("POST", "/admin/reload"): client.post("/admin/reload", headers=AUTH)}
    for (method, path), response in answers.items():
        assert response.status_code == 200, (path, response.text)
        assert_matches_its_schema(client, method, path, response.json())
    model = answers["GET", "/model"].json()
    assert model["ready"] is False and model["refused"] == {} and model["version"] is None
    with pytest.raises(Exception, match="is not of type 'object'"):  # what drifted before
        assert_matches_its_schema(client, "GET", "/model", {**model, "refused": []})
    with pytest.raises(Exception, match="Additional properties"):
        assert_matches_its_schema(client, "GET", "/model", {**model, "stray": 1})


def queued_ids(kind: str) -> list[bytes | str]:
    import redis

    return list(redis.Redis.from_url(REDIS).lrange(kind, 0, -1))


def test_a_job_writing_into_the_registry_is_refused_and_changes_nothing(
        client: TestClient, bundles: Bundles, registry_dir: Path, tmp_path: Path) -> None:
    """The history-poisoning request of issue 21: out inside the registry's history."""
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="first", force=True)
    before = sorted(p.relative_to(registry_dir) for p in registry_dir.rglob("*"))
    queued = queued_ids(jobs.SCORE_QUEUE)
    (tmp_path / "images").mkdir()
    src = str(tmp_path / "images")
    for body, says in (
        ({"src": src, "out": str(registry_dir / "history")}, "overlaps the model registry"),
        ({"src": src, "out": f"{registry_dir}//history"}, "overlaps the model registry"),
        ({"src": src, "out": str(tmp_path)}, "overlaps the model registry"),  # holds it
        ({"src": src, "out": f"{tmp_path}/x/../registry"}, "without '..'"),
        ({"src": "/", "out": str(tmp_path / "out")}, "under a job root"),
        ({"src": "/etc", "out": str(tmp_path / "out")}, "is not under a job root"),
        ({"src": "/no/such/dir", "out": str(tmp_path / "out")}, "is not under a job root"),
        ({"src": src, "out": "s3://piston/registry/history"}, "is not under a job root"),
    ):
        response = client.post("/jobs/score", json=body, headers=AUTH)
        assert response.status_code == 403, (body, response.text)
        assert response.json()["kind"] == "forbidden" and says in response.json()["error"]
        assert "exist" not in response.json()["error"]  # nothing said about paths outside
    after = sorted(p.relative_to(registry_dir) for p in registry_dir.rglob("*"))
    assert after == before and queued_ids(jobs.SCORE_QUEUE) == queued
    assert registry.current() == bundles.good


def test_retrain_overrides_are_an_allow_list_with_bounds(client: TestClient) -> None:
    queued = queued_ids(jobs.RETRAIN_QUEUE)
    for overrides, status, says in (
        ({"epochs": 10_000}, 400, "override epochs=10000"),
        ({"epochs": True}, 400, "a whole number"),
        ({"min_steps": 10**9}, 400, "override min_steps"),
        ({"input_size": [1024, 1024]}, 400, "over the limit"),
        ({"input_size": [4096, 4096]}, 400, "from 16 to 1024"),
        ({"arch_params": {"widths": [1024] * 40}}, 400, "arch_params.widths"),
        ({"search": ["bn_cnn"] * 50}, 400, "'search' is not allowed"),
        ({"pretrained_weights": "/etc/passwd"}, 403, "under a retrain root"),
        ({"pretrained_weights": "/no/such/file"}, 403, "under a retrain root"),
    ):
        body = {"dataset": "s3://bucket/pistons", "overrides": overrides}
        response = client.post("/admin/retrain", json=body, headers=AUTH)
        assert response.status_code == status, (overrides, response.text)
        error = response.json()["error"]
        assert says in error and "\n" not in error and len(error) < 500, error
        assert "root:" not in error  # /etc/passwd's contents never come back
    outside = client.post("/admin/retrain", json={"dataset": "/etc"}, headers=AUTH)
    assert outside.status_code == 403
    assert queued_ids(jobs.RETRAIN_QUEUE) == queued


def test_small_leaks_are_closed(client: TestClient, bundles: Bundles,
                                registry_dir: Path) -> None:
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    # a non-ASCII bearer token is refused like any wrong one, not a 500
    for token in ("Bearer t\xc3\xb6k\xc3\xa9n".encode("latin-1"), b"Bearer \xff\xfe"):
        response = client.get("/admin/models", headers={"Authorization": token})
        assert response.status_code == 401 and response.json()["kind"] == "unauthorized"
    # a reason has a length limit
    long = client.post("/admin/promote", json={"version": bundles.other, "reason": "x" * 501,
                                               "force": True, "expected": bundles.good},
                       headers=AUTH)
    assert long.status_code == 422 and "reason" in long.json()["error"]
    # /model without a token shows no paths; with it, why bundles were refused
    registry.storage.write("history/99999999.json", b"{}")  # breaks the pointer: an error
    client.post("/admin/reload", headers=AUTH)
    public = client.get("/model")
    assert public.status_code == 200 and public.json()["version"] == bundles.good
    assert str(registry_dir) not in public.text and "last_error" not in public.json()
    detailed = client.get("/model", headers=AUTH).json()
    assert str(registry_dir) in detailed["last_error"] and "99999999" in detailed["last_error"]
    assert client.get("/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # the console cannot be framed, and a report runs sandboxed even opened alone
    page = client.get("/ui/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    report = client.get(f"/ui/api/models/{bundles.good}/report", headers=AUTH)
    assert report.status_code == 200 and "Quality gates" in report.text
    assert report.headers["content-security-policy"].startswith("sandbox;")
    script = client.get("/ui/static/console.js").text
    assert "report-open" not in script and '"text/html"' not in script  # no blob: page of it


def explanation_fits(answer: dict[str, Any], width: int, height: int) -> None:
    """The answer's heatmap is a PNG at the image's aspect; its box lies inside the image."""
    found = answer["explanation"]
    assert found["label"] == answer["label"] and found["method"] == "cam"
    assert (found["image_width"], found["image_height"]) == (width, height)
    box = found["box"]
    assert 0 <= box["x0"] < box["x1"] <= width and 0 <= box["y0"] < box["y1"] <= height
    png = Image.open(io.BytesIO(base64.b64decode(found["heatmap_png"])))
    assert png.format == "PNG" and abs(png.width / png.height - width / height) < 0.02


def test_explain_adds_a_heatmap_only_when_asked(
        client: TestClient, bundles: Bundles, registry_dir: Path, piston_data: Path) -> None:
    open_registry(registry_dir).promote(bundles.good, reason="first", force=True)
    wait_ready(client)
    wide = encoded("RGB", "JPEG", (160, 90))
    part = (piston_data / "defect_1" / "defect_30.jpeg").read_bytes()
    plain = client.post("/classify", files={"image": ("a.jpg", part, "image/jpeg")}).json()
    assert plain["explanation"] is None
    asked = client.post("/classify", files={"image": ("a.jpg", part, "image/jpeg")},
                        data={"explain": "true"})
    assert asked.status_code == 200
    explanation_fits(asked.json(), 80, 80)
    assert asked.json()["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-4)
    raw = client.post("/classify?explain=1", content=wide,
                      headers={"content-type": "image/jpeg"})
    explanation_fits(raw.json(), 160, 90)
    batch = client.post("/classify_batch", data={"explain": "yes"}, files=[
        ("images", ("a.jpg", part, "image/jpeg")), ("images", ("b.jpg", b"nope", "image/jpeg")),
        ("images", ("c.jpg", wide, "image/jpeg"))]).json()["results"]
    explanation_fits(batch[0], 80, 80)
    assert batch[1]["kind"] == "not_an_image" and "explanation" not in batch[1]
    explanation_fits(batch[2], 160, 90)
    for bad in ({"data": {"explain": "maybe"}}, {"params": {"explain": "2"}}):
        refused = client.post("/classify", files={"image": ("a.jpg", part, "image/jpeg")},
                              **bad)  # type: ignore[arg-type]
        assert refused.status_code == 400 and refused.json()["kind"] == "bad_request"
        assert "explain must be true or false" in refused.json()["error"]
    refused = client.post("/classify_batch?explain=sure",
                          files=[("images", ("a.jpg", part, "image/jpeg"))])
    assert refused.status_code == 400


def test_docs_json_shows_explain(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    for path in ("/classify", "/classify_batch"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        assert "explain" in body["schema"]["properties"], path
    assert {"Explanation", "Box"} <= set(spec["components"]["schemas"])
    answer = spec["paths"]["/classify"]["post"]["responses"]["200"]["content"]
    assert "explanation" in answer["application/json"]["schema"]["properties"]
