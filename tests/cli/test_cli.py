"""The `piston` command end to end: train, list, promote, retrain, promote, roll back, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cli.main import main
from tests.conftest import synthetic_dataset


def piston(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, object]:
    code = main(list(args))
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in args and out.strip() else out


@pytest.mark.slow  # trains
def test_train_promote_retrain_promote_rollback(
    piston_data: Path, registry_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_args = ["train", "--data", str(piston_data), "--recipe", "seed", "--set", "epochs=3",
                  "--json"]  # fmt: skip
    code, first = piston(capsys, *train_args)
    assert code == 0
    assert isinstance(first, dict)
    for key in (
        "version",
        "test_accuracy",
        "macro_f1",
        "confusion_matrix",
        "per_class",
        "gates",
        "novelty",
        "train_seconds",
    ):
        assert key in first, key
    assert set(first["per_class"]["normal"]) >= {"precision", "recall", "f1"}
    assert Path(first["report"]).is_file()

    code, listed = piston(capsys, "models", "list", "--json")
    assert [row["version"] for row in listed] == [first["version"]]  # type: ignore[index]

    assert (
        piston(capsys, "models", "promote", first["version"], "--force", "--reason", "first model")[
            0
        ]
        == 0
    )
    code, second = piston(capsys, *train_args)
    assert isinstance(second, dict)
    assert (
        piston(capsys, "models", "promote", second["version"], "--force", "--reason", "retrained")[
            0
        ]
        == 0
    )
    code, current = piston(capsys, "models", "current", "--json")
    assert current == {"production": second["version"]}
    code, moved = piston(capsys, "models", "rollback", "--reason", "bad in the field", "--json")
    assert code == 0 and moved["version"] == first["version"]  # type: ignore[index]
    code, history = piston(capsys, "models", "history", "--json")
    assert [(m["action"], m["version"]) for m in history] == [  # type: ignore[union-attr]
        ("promote", first["version"]),
        ("promote", second["version"]),
        ("rollback", first["version"]),
    ]
    code, shown = piston(capsys, "models", "show", second["version"], "--json")
    assert shown["parent"] == first["version"]  # type: ignore[index]

    image = piston_data / "normal" / "normal_0.jpeg"
    bad = registry_env.parent / "bad.jpg"
    bad.write_text("not an image")
    code, predictions = piston(capsys, "predict", str(image), str(bad), "--json")
    assert code == 1  # one image failed, and says why
    assert predictions[0]["model_version"] == first["version"]  # type: ignore[index]
    assert predictions[0]["label"] in {"defect_1", "defect_2", "normal"}  # type: ignore[index]
    assert "not a recognised image" in predictions[1]["error"]  # type: ignore[index]
    assert predictions[0]["novelty"] is not None  # type: ignore[index]
    heatmaps = registry_env.parent / "heatmaps"
    code, explained = piston(capsys, "predict", str(image), str(bad), "--explain", str(heatmaps),
                             "--json")
    assert code == 1 and isinstance(explained, list)
    written = Path(explained[0]["heatmap"])
    assert written.parent == heatmaps and Image.open(written).size == (80, 80)
    assert explained[0]["label"] == predictions[0]["label"]  # type: ignore[index]
    box = explained[0]["box"]
    assert 0 <= box["x0"] < box["x1"] <= 80 and 0 <= box["y0"] < box["y1"] <= 80
    assert "heatmap" not in explained[1] and list(heatmaps.iterdir()) == [written]


def test_predict_says_why_an_image_needs_review() -> None:
    from cli.predict import _line
    from piston.scoring import Decision, ImageFailure

    common = {"label": "normal", "confidence": 0.97, "probabilities": {"normal": 0.97},
              "model_version": "v"}
    novel = Decision(**common, needs_review=True, review_reason="novel", novelty=75.25,
                     novel=True)
    assert _line(novel) == "normal (0.970)  needs review: novel (novelty 75.2)"
    unsure = Decision(**common | {"confidence": 0.5}, needs_review=True,
                      review_reason="low_confidence", novelty=3.0)
    assert _line(unsure) == "normal (0.500)  needs review: low_confidence"
    assert _line(Decision(**common, needs_review=False)) == "normal (0.970)"
    assert _line(ImageFailure(error="empty file", kind="empty")) == "error: empty file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/no/such/folder"], "does not exist"),
        (["train", "--set", "epochs"], "KEY=VALUE"),
        (["train", "--set", "epochs=-1"], "epochs"),
        (["train", "--recipe", "nope"], "unknown recipe"),
        (["train", "--config", "/no/such.yaml"], "cannot read config"),
        (["models", "promote", "20990101-000000-000", "--reason", "x"], "no bundle"),
        (["models", "rollback", "--reason", "x"], "nothing is in production"),
        (["predict", "x.jpg"], "no bundle is in production"),
        (["predict", "x.jpg", "--explain", "/proc/no/such"], "--explain /proc/no/such"),
        (["data", "check", "/no/such/folder"], "does not exist"),
        (["train", "--budget", "ten minutes"], "write it as 10m"),
        (["train", "--budget", "0s"], "more than 0"),
        (["train", "--recipe", "bn_cnn", "--set", "pretrained=imagenet", "--set", "epochs=1"],
         "needs a torchvision architecture"),
        (["train", "--set", "search=[nope]"], "unknown recipe"),
    ],
)
def test_bad_input_ends_with_one_line(
    registry_env: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_the_installed_command_prints_no_traceback(registry_env: Path) -> None:
    env = {**os.environ, "PISTON_REGISTRY": str(registry_env)}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "models", "promote", "v1", "--reason", "typo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: no bundle 'v1' in the registry (see `piston models list`)"
    ]


def test_job_commands_say_when_redis_is_down(
    registry_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PISTON_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["jobs", "status", "some-id"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach Redis at redis://127.0.0.1:1/0")


def test_strict_training_refuses_label_conflicts_in_one_line(
    registry_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = synthetic_dataset(tmp_path / "data", {"a": 12, "b": 12})
    shutil.copy(root / "a" / "a_0.png", root / "b" / "also_a.png")
    assert main(["train", "--data", str(root), "--strict", "--set", "epochs=1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: 1 label conflicts") and "also_a.png" in last
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [sorted(c["keys"]) for c in report["label_conflicts"]] == [
        ["a/a_0.png", "b/also_a.png"]]


def test_job_paths_and_overrides_are_checked_before_anything_is_queued(
    registry_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused in one line before Redis is reached (nothing listens on port 1)."""
    monkeypatch.setenv("PISTON_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("PISTON_JOB_ROOTS", json.dumps([str(tmp_path)]))
    monkeypatch.setenv("PISTON_RETRAIN_DATASET_ROOTS", json.dumps([str(tmp_path)]))
    (tmp_path / "in").mkdir()
    for args, message in (
        (["jobs", "score", "/", "--out", str(tmp_path / "out")], "give a folder"),
        (["jobs", "score", str(tmp_path / "in"), "--out", str(registry_env / "history")],
         "overlaps the model registry"),
        (["jobs", "score", "/etc", "--out", str(tmp_path / "out")], "not under a job root"),
        (["jobs", "retrain", str(tmp_path / "in"), "--set", "epochs=100000"],
         "override epochs=100000: must be a whole number from 1 to 200"),
        (["jobs", "retrain", str(tmp_path / "in"), "--set", "pretrained_weights=/etc/passwd"],
         "under a retrain root"),
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    monkeypatch.setenv("PISTON_SCORE_SCHEDULE", json.dumps({str(tmp_path / "in"): "/tmp/out"}))
    assert main(["beat"]) == 2
    assert "out '/tmp/out' is not under a job root" in capsys.readouterr().err


def test_shadow_report_reads_for_a_person() -> None:
    """`piston shadow` prints the typed report: who is compared, state, counts, the matrix."""
    from cli.shadow import describe
    from piston.shadow import ShadowReport, ShadowSpec

    assert describe(ShadowReport(active=False, headline="no shadow")) == "no shadow"
    spec = ShadowSpec(id="s1", version="v2", share=0.5, production="v1", started_at="t0",
                      ended_at="t1", ended_reason="promoted")
    text = describe(ShadowReport(active=False, spec=spec, offered=10, compared=7, failed=1,
                                 dropped={"busy": 2}, headline="agree on 6 of 7",
                                 matrix={"normal": {"normal": 6, "defect_1": 1}}))
    lines = text.splitlines()
    assert lines[0] == "shadow of v2 vs v1: ended (promoted)" and lines[1] == "agree on 6 of 7"
    assert lines[2] == "offered 10, compared 7, dropped 2 busy, failed 1"
    assert lines[3] == "  production normal: candidate defect_1 1, candidate normal 6"
