"""The training report a person opens: curves, confusion matrix, misclassified gallery."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from piston.novelty import NoveltyInfo, rule
from training.calibrate import CalibrationFigures
from training.check import DataFigures
from training.decode import DecodedSet
from training.evaluate import Evaluation
from training.run_figures import RunFigures
from training.search import SearchRow
from training.train import Epoch


def write_report(
    out: Path,
    title: str,
    metrics: RunFigures,
    history: list[Epoch],
    classes: list[str],
    wrong: list[tuple[str, np.ndarray, str, str, float]],
) -> Path:
    """Write metrics.json, curves.png, confusion.png and report.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics.model_dump(), indent=2))
    _plot_curves(history, out / "curves.png")
    plot_confusion(np.asarray(metrics.confusion_matrix), classes, out / "confusion.png")
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in metrics.warnings)
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} td,th{{padding:4px 10px}}
.pass{{color:#080}} .fail{{color:#b00}} figure{{display:inline-block;margin:6px;width:140px;
font-size:11px}} .chosen{{background:#e8f4e8}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Test accuracy <b>{metrics.accuracy:.3f}</b>, macro-F1 <b>{metrics.macro_f1:.3f}</b>
on {metrics.support} test images ({html.escape(metrics.split)} split),
input size {html.escape(str(metrics.input_size))}, recipe
<b>{html.escape(metrics.candidate)}</b>.</p>
<h2>Warnings</h2><ul>{warnings or "<li>none</li>"}</ul>
<h2>Quality gates</h2><ul>{_gates(metrics)}</ul>
<h2>Review band</h2>{_review_band(metrics.calibration)}
<h2>Novelty check</h2>{_novelty(metrics.novelty)}
<h2>Per class</h2>{_per_class(metrics)}
<h2>Images per split</h2>{_support(metrics)}
{_search(metrics.search)}
<h2>Data check</h2>{_data(metrics.data)}
<h2>Training curves</h2><img src="curves.png" width=900>
<h2>Confusion matrix (test)</h2><img src="confusion.png" width=420>
<h2>Misclassified test images</h2>{_gallery(wrong)}
</body></html>"""
    (out / "report.html").write_text(page)
    return out / "report.html"


def misclassified(
    test: DecodedSet, evaluation: Evaluation, classes: list[str]
) -> list[tuple[str, np.ndarray, str, str, float]]:
    """(key, pixels, true class, predicted class, confidence) of every wrong test image."""
    wrong = np.nonzero(evaluation.predicted != test.labels)[0]
    return [(test.keys[i], test.images[i], classes[int(test.labels[i])],
             classes[int(evaluation.predicted[i])], float(evaluation.probs[i].max()))
            for i in wrong]


def _gates(metrics: RunFigures) -> str:
    return "".join(
        f"<li class={'pass' if g.passed else 'fail'}>{html.escape(g.name)}: "
        f"{g.value:.3f} (bar {g.threshold}) {'PASS' if g.passed else 'FAIL'}</li>"
        for g in metrics.gates)


def _per_class(metrics: RunFigures) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{f.precision:.3f}</td><td>{f.recall:.3f}</td>"
        f"<td>{f.f1:.3f}</td><td>{f.support}</td></tr>"
        for n, f in metrics.per_class.items())
    return ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr>{rows}</table>")


def _support(metrics: RunFigures) -> str:
    by_split, classes = metrics.support_by_split, metrics.classes
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{counts.get(c, 0)}</td>" for c in classes) + "</tr>"
        for name, counts in by_split.items())
    return f"<table><tr><th>split</th>{head}</tr>{rows}</table>"


def _search(rows: list[SearchRow]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr class={'chosen' if r.chosen else ''}><td>{html.escape(r.candidate)}</td>"
        f"<td>{r.parameters:,}</td><td>{_num(r.val_accuracy)}</td>"
        f"<td>{_num(r.val_macro_f1)}</td><td>{_num(r.val_loss)}</td><td>{r.epochs}</td>"
        f"<td>{r.seconds}</td><td>{html.escape(r.note)}</td></tr>" for r in rows)
    return ("<h2>Candidates (validation split)</h2><table><tr><th>candidate</th>"
            "<th>parameters</th><th>accuracy</th><th>macro-F1</th><th>loss</th><th>epochs</th>"
            f"<th>seconds</th><th>why</th></tr>{body}</table>")


def _data(data: DataFigures) -> str:
    conflicts = "".join(
        f"<li>{html.escape(' vs '.join(c.keys))} ({html.escape(' / '.join(c.classes))})</li>"
        for c in data.label_conflicts)
    return (f"<p>{data.images} images; {data.near_duplicate_groups}"
            f" near-duplicate groups (largest {data.largest_near_duplicate_group},"
            f" {data.images_in_groups_over_10} images in groups over 10); bar"
            f" {data.near_duplicate_bar}.</p>"
            f"<p>Label conflicts (left out):</p><ul>{conflicts or '<li>none</li>'}</ul>")


def _gallery(wrong: list[tuple[str, np.ndarray, str, str, float]]) -> str:
    return "".join(
        f"<figure><img src='data:image/png;base64,{_png_b64(img)}' width=120>"
        f"<figcaption>{html.escape(key)}<br>true <b>{html.escape(t)}</b>, predicted "
        f"<b>{html.escape(p)}</b> ({conf:.2f})</figcaption></figure>"
        for key, img, t, p, conf in wrong) or "<p>No misclassified test images.</p>"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) and np.isfinite(value) else "-"


def _review_band(cal: CalibrationFigures) -> str:
    """The calibration, the review thresholds and what they do on the test split."""
    accepted = "-" if cal.accepted_accuracy is None else f"{cal.accepted_accuracy:.3f}"
    per_class = "".join(f"<li>{html.escape(name)}: {bar:.3f}</li>"
                        for name, bar in cal.class_thresholds.items())
    hard = (f"<p>Thresholds per predicted class (higher where its predictions err more, lower"
            f" where they err less; the global one for classes never predicted on"
            f" validation):</p>"
            f"<ul>{per_class}</ul>") if per_class else ""
    return (
        f"<p>Confidence is calibrated on {cal.val_images} validation images (temperature"
        f" <b>{cal.temperature:.3f}</b>). Predictions under confidence"
        f" <b>{cal.threshold:.3f}</b> (from {html.escape(cal.threshold_source)} data, target"
        f" error {_num(cal.target_error)}) are flagged needs_review:"
        f" <b>{cal.review_share:.1%}</b> of the test images; accuracy of the accepted ones"
        f" <b>{accepted}</b> ({cal.accepted} images); expected calibration error"
        f" <b>{_num(cal.ece)}</b> (plain softmax {_num(cal.ece_uncalibrated)}).</p>{hard}"
        + (f"<p>The rule before calibration (plain softmax, errors counted) would send"
           f" {cal.plain_review_share:.1%} to review, accepted accuracy"
           f" {_num(cal.plain_accepted_accuracy)}.</p>" if cal.plain_review_share is not None
           else "")
    )


def _novelty(info: NoveltyInfo | None) -> str:
    """The novelty threshold and the share of familiar images it flags."""
    if info is None:
        return "<p>No novelty model.</p>"
    test = info.test_flagged
    return (
        f"<p>Images with <b>{html.escape(rule(info))}</b>"
        f" (a {html.escape(info.threshold_source)},"
        f" target {info.target_share:.0%}) are flagged novel and always need review:"
        f" <b>{info.val_flagged:.1%}</b> of the validation images,"
        f" <b>{'-' if test is None else f'{test:.1%}'}</b> of the test images.</p>"
    )


def _png_b64(chw: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _plot_curves(history: list[Epoch], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e.epoch for e in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(epochs, [e.train_loss for e in history], label="train")
    loss_ax.plot(epochs, [e.val_loss for e in history], label="validation")
    loss_ax.set(title="loss", xlabel="epoch")
    acc_ax.plot(epochs, [e.train_accuracy for e in history], label="train")
    acc_ax.plot(epochs, [e.val_accuracy for e in history], label="validation")
    acc_ax.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    """A labelled confusion-matrix heat map (rows = true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 2.0 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    peak = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > peak / 2 else "black",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
