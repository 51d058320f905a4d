"""Heatmaps of a model trained on the pistons: does the box of a holed part find the hole?"""

from __future__ import annotations

import json
from pathlib import Path

from piston.bundle import Predictor
from piston.scoring import Decision, score_blobs
from tests.service.conftest import Bundles, open_registry

HOLES = Path(__file__).with_name("holes.json")


def overlap(a: tuple[int, ...], b: list[int]) -> int:
    """The pixels two (x0, y0, x1, y1) boxes share."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def test_the_box_of_a_holed_piston_overlaps_the_hand_marked_hole(
        bundles: Bundles, piston_data: Path) -> None:
    """Most boxes overlap the hole marked by hand in tests/service/holes.json (a weak check:
    the default net's last maps are 3x3, so its boxes are large; see docs/serving.md)."""
    predictor = Predictor.load(open_registry(bundles.registry).fetch(bundles.good))
    holes: dict[str, list[int]] = json.loads(HOLES.read_text())["holes"]
    blobs = [(piston_data / "defect_1" / name).read_bytes() for name in holes]
    outcomes = score_blobs(predictor, blobs, 10**6, explain=True)
    found = []
    for (name, hole), outcome in zip(holes.items(), outcomes, strict=True):
        assert isinstance(outcome, Decision) and outcome.explanation is not None
        b = outcome.explanation.box
        assert 0 <= b.x0 < b.x1 <= 80 and 0 <= b.y0 < b.y1 <= 80
        found.append((name, (b.x0, b.y0, b.x1, b.y1), hole))
    hits = [name for name, box, hole in found if overlap(box, hole) > 0]
    assert len(hits) >= 0.75 * len(found), found
