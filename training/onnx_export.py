"""The bundle's `model.onnx`: the trained network exported for ONNX Runtime, checked against torch.

What is exported is `piston.arch.Embedder` around the module, so the test-time augmentation
(`FlipAverage`), `Shrink` and `Standardize` run inside the graph and the outputs are the
`NetOutput` pair, `logits` and `features`, with a dynamic batch axis. A net with a class
activation map is exported as `piston.cam.CamEmbedder`, which adds `class_maps` (every
class's map, for heatmaps without torch); the runtime reads its outputs by name. A bundle with a
novelty check gets it in the graph too (`piston.novelty_head.Scored`: the output `novelty`),
so the export runs after the check is fitted. torch's own exporter (torch.export +
onnxscript) runs offline.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from piston.arch import Embedder
from piston.bundle import BundleMeta, OnnxExport
from piston.cam import cam_embedder
from piston.imaging import Contract
from piston.novelty import Scorer
from piston.novelty_head import NoveltyHead, Scored
from piston.runtime import MAPS, NOVELTY, OUTPUTS, OnnxRuntime, TorchRuntime
from training.train import to_inputs

log = logging.getLogger(__name__)
INPUT = "images"
EXAMPLE_BATCH = 2  # not 0 or 1, which torch.export would specialise the batch axis to
PARITY_LIMIT = 1e-4  # max |p_onnx - p_torch|; over it the bundle ships without model.onnx
PARITY_BATCH = 64
# max |map_onnx - map_torch| over the map's range; over it the graph ships without class maps
# (a thousandth of the range is a quarter of the heatmap PNG's colour step)
MAP_PARITY_LIMIT = 1e-3
# max |n_onnx - n_torch| / n_torch of the novelty score; over it the graph ships without it
# (decide then scores the features in numpy). A thousandth moves a flag only for an image
# within 0.1% of the threshold.
NOVELTY_PARITY_LIMIT = 1e-3


def export_onnx(net: nn.Module, contract: Contract, path: Path,
                output_names: Sequence[str] = OUTPUTS) -> int:
    """Write `net` (in eval mode, inputs (N, 3, H, W) float32) to `path`; returns the opset."""
    net.eval()
    example = torch.zeros(EXAMPLE_BATCH, 3, contract.height, contract.width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(
            net, (example,), dynamo=True, input_names=[INPUT], output_names=list(output_names),
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    assert program is not None
    program.save(str(path), external_data=False)  # one file, whatever the size
    return int(next(o.version for o in program.model_proto.opset_import if o.domain == ""))


def export_bundle_onnx(module: nn.Module, contract: Contract, path: Path,
                       novelty: Scorer | None = None, maps: bool = True) -> int:
    """The bundle's graph: with `class_maps` when the net has a class activation map (and
    `maps`), with `novelty` when the bundle has a novelty check."""
    cam = cam_embedder(module) if maps else None
    net: nn.Module = Embedder(module) if cam is None else cam
    names: tuple[str, ...] = OUTPUTS if cam is None else (*OUTPUTS, MAPS)
    if novelty is not None:
        net, names = Scored(net, NoveltyHead(novelty)), (*names, NOVELTY)
    return export_onnx(net, contract, path, names)


@dataclass(frozen=True)
class Parity:
    """How an exported graph agrees with torch over the test split."""

    max_prob_diff: float  # max |p_onnx - p_torch| (calibrated probabilities)
    labels_differ: int
    max_map_diff: float | None  # class maps (see map_difference); None without them
    max_novelty_diff: float | None = None  # see novelty_difference; None without the output


def compare(module: nn.Module, path: Path, meta: BundleMeta, images: np.ndarray,
            novelty: Scorer | None = None) -> Parity:
    """The graph at `path` against `module` (and its `novelty` check) over uint8 NCHW
    `images`."""
    torch_rt, onnx_rt = TorchRuntime(module, novelty=novelty), OnnxRuntime.load(path)
    contract, calibration = meta.contract, meta.calibration
    worst, differ, worst_map, worst_novelty = 0.0, 0, 0.0, 0.0
    for begin in range(0, len(images), PARITY_BATCH):
        batch = to_inputs(images[begin:begin + PARITY_BATCH], contract).numpy()
        if onnx_rt.has_maps:
            ours, theirs = onnx_rt.explain(batch), torch_rt.explain(batch)
            worst_map = max(worst_map, map_difference(ours.maps, theirs.maps))
        else:
            ours, theirs = onnx_rt.forward(batch), torch_rt.forward(batch)
        if onnx_rt.has_novelty:
            worst_novelty = max(worst_novelty, novelty_difference(ours.novelty, theirs.novelty))
        p_torch = calibration.probabilities(theirs.logits)
        p_onnx = calibration.probabilities(ours.logits)
        worst = max(worst, float(np.abs(p_onnx - p_torch).max()))
        differ += int((p_onnx.argmax(1) != p_torch.argmax(1)).sum())
    return Parity(worst, differ, worst_map if onnx_rt.has_maps else None,
                  worst_novelty if onnx_rt.has_novelty else None)


def novelty_difference(ours: np.ndarray | None, theirs: np.ndarray | None) -> float:
    """Max |difference| of two novelty scores relative to torch's (at least 1e-6)."""
    assert ours is not None and theirs is not None and ours.shape == theirs.shape
    return float((np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-6)).max())


def map_difference(ours: np.ndarray | None, theirs: np.ndarray | None) -> float:
    """Max |difference| of two (N, C, h, w) map stacks, per image relative to its range."""
    assert ours is not None and theirs is not None and ours.shape == theirs.shape
    spread = np.ptp(theirs.reshape(len(theirs), -1), axis=1).reshape(-1, 1, 1, 1)
    return float((np.abs(ours - theirs) / np.maximum(spread, 1e-6)).max())


def with_onnx(meta: BundleMeta, module: nn.Module, test_images: np.ndarray,
              path: Path, novelty: Scorer | None = None) -> BundleMeta:
    """Export `module` (with the bundle's fitted `novelty` check) to `path` and record the
    parity on the test split in the meta.

    A network the exporter cannot handle, or whose export disagrees with torch, leaves the
    bundle without `model.onnx` (it is then scored with torch) and says so in the log; one
    whose class maps disagree is exported without them (heatmaps then come from torch), one
    whose novelty score disagrees without it (scored in numpy from the features).
    """
    start = time.perf_counter()
    try:
        opset = export_bundle_onnx(module, meta.contract, path, novelty)
        parity = compare(module, path, meta, test_images, novelty)
        maps_off = parity.max_map_diff is not None and parity.max_map_diff > MAP_PARITY_LIMIT
        novelty_off = (parity.max_novelty_diff is not None
                       and parity.max_novelty_diff > NOVELTY_PARITY_LIMIT)
        if maps_off:
            log.warning("model.onnx for bundle %s without class maps: they differ from torch's"
                        " by %.2g of their range (limit %.0e)", meta.version,
                        parity.max_map_diff, MAP_PARITY_LIMIT)
        if novelty_off:
            log.warning("model.onnx for bundle %s without the novelty score: it differs from"
                        " torch's by %.2g (limit %.0e)", meta.version, parity.max_novelty_diff,
                        NOVELTY_PARITY_LIMIT)
        if maps_off or novelty_off:
            kept = None if novelty_off else novelty
            opset = export_bundle_onnx(module, meta.contract, path, kept, maps=not maps_off)
            parity = compare(module, path, meta, test_images, kept)
    except Exception as err:  # an architecture the exporter cannot handle: torch only
        log.warning("no model.onnx for bundle %s (%s: %s): it will be scored with torch",
                    meta.version, type(err).__name__, err)
        path.unlink(missing_ok=True)
        return meta
    if parity.max_prob_diff > PARITY_LIMIT:
        log.warning("no model.onnx for bundle %s: its probabilities differ from torch's by"
                    " %.2g (limit %.0e)", meta.version, parity.max_prob_diff, PARITY_LIMIT)
        path.unlink(missing_ok=True)
        return meta
    onnx = OnnxExport(opset=opset, max_prob_diff=parity.max_prob_diff, images=len(test_images),
                      labels_differ=parity.labels_differ,
                      export_seconds=round(time.perf_counter() - start, 2),
                      max_map_diff=parity.max_map_diff,
                      max_novelty_diff=parity.max_novelty_diff)
    log.info("model.onnx for bundle %s: max probability difference %.2g on %d test images",
             meta.version, parity.max_prob_diff, len(test_images))
    return meta.model_copy(update={"onnx": onnx})
