"""The bundle's `model.onnx`: the trained network exported for ONNX Runtime, checked against torch.

What is exported is `piston.arch.Embedder` around the module, so the test-time augmentation
(`FlipAverage`), `Shrink` and `Standardize` run inside the graph and the outputs are the
`NetOutput` pair, `logits` and `features`, with a dynamic batch axis. A wrapper with more
outputs (say, heat maps) exports the same way with its own `output_names`; the runtime reads
its outputs by name. torch's own exporter (torch.export + onnxscript) runs offline.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from piston.arch import Embedder
from piston.bundle import BundleMeta, OnnxExport
from piston.imaging import Contract
from piston.runtime import OUTPUTS, OnnxRuntime, TorchRuntime
from training.train import to_inputs

log = logging.getLogger(__name__)
INPUT = "images"
EXAMPLE_BATCH = 2  # not 0 or 1, which torch.export would specialise the batch axis to
PARITY_LIMIT = 1e-4  # max |p_onnx - p_torch|; over it the bundle ships without model.onnx
PARITY_BATCH = 64


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


def compare(module: nn.Module, path: Path, meta: BundleMeta,
            images: np.ndarray) -> tuple[float, int]:
    """Max |p_onnx - p_torch| (calibrated probabilities) and how many labels differ, over
    uint8 NCHW `images`."""
    torch_rt, onnx_rt = TorchRuntime(module), OnnxRuntime.load(path)
    contract, calibration = meta.contract, meta.calibration
    worst, differ = 0.0, 0
    for begin in range(0, len(images), PARITY_BATCH):
        batch = to_inputs(images[begin:begin + PARITY_BATCH], contract).numpy()
        p_torch = calibration.probabilities(torch_rt.forward(batch).logits)
        p_onnx = calibration.probabilities(onnx_rt.forward(batch).logits)
        worst = max(worst, float(np.abs(p_onnx - p_torch).max()))
        differ += int((p_onnx.argmax(1) != p_torch.argmax(1)).sum())
    return worst, differ


def with_onnx(meta: BundleMeta, module: nn.Module, test_images: np.ndarray,
              path: Path) -> BundleMeta:
    """Export `module` to `path` and record the parity on the test split in the meta.

    A network the exporter cannot handle, or whose export disagrees with torch, leaves the
    bundle without `model.onnx` (it is then scored with torch) and says so in the log.
    """
    start = time.perf_counter()
    try:
        opset = export_onnx(Embedder(module), meta.contract, path)
        worst, differ = compare(module, path, meta, test_images)
    except Exception as err:  # an architecture the exporter cannot handle: torch only
        log.warning("no model.onnx for bundle %s (%s: %s): it will be scored with torch",
                    meta.version, type(err).__name__, err)
        path.unlink(missing_ok=True)
        return meta
    if worst > PARITY_LIMIT:
        log.warning("no model.onnx for bundle %s: its probabilities differ from torch's by"
                    " %.2g (limit %.0e)", meta.version, worst, PARITY_LIMIT)
        path.unlink(missing_ok=True)
        return meta
    onnx = OnnxExport(opset=opset, max_prob_diff=worst, images=len(test_images),
                      labels_differ=differ, export_seconds=round(time.perf_counter() - start, 2))
    log.info("model.onnx for bundle %s: max probability difference %.2g on %d test images",
             meta.version, worst, len(test_images))
    return meta.model_copy(update={"onnx": onnx})
