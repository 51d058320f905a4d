"""What runs a bundle's network: ONNX Runtime or torch. Both give a `NetOutput`.

A bundle carries its weights for torch and, since issue 22, the same network exported to
`model.onnx` (test-time augmentation inside, outputs `logits` and `features`, for nets
with a class activation map `class_maps` too, and for bundles with a novelty check
`novelty`, the check's score computed in the graph). The ONNX path imports neither torch nor
`piston.arch`: a process that serves, scores or explains with it never loads torch (about
half of an API worker's memory). A bundle without `model.onnx` runs on torch whatever was
asked; one whose `model.onnx` has no `class_maps` explains with its torch weights, one without
`novelty` (exported before the check moved into the graph) is scored in numpy by `decide`.
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from piston.scoring import NetOutput

if TYPE_CHECKING:
    from torch import nn

    from piston.bundle import BundleMeta
    from piston.cam import FeatureMaps
    from piston.explain import Method
    from piston.novelty import Scorer
    from piston.novelty_head import NoveltyHead

log = logging.getLogger(__name__)

RuntimeName = Literal["onnx", "torch"]
# Measured here (bench/serve.py, docs/benchmarks.md): ONNX Runtime is the faster one.
DEFAULT_RUNTIME: RuntimeName = "onnx"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
OUTPUTS = ("logits", "features")  # what NetOutput needs; a model may have more (e.g. maps)
MAPS = "class_maps"  # the optional output for heatmaps: (N, C, h, w), see piston.cam
NOVELTY = "novelty"  # the optional output of the bundle's novelty check: (N,), piston.novelty_head


class Runtime(ABC):
    """One loaded network: (N, 3, H, W) float32 in, logits and features out."""

    name: ClassVar[RuntimeName]

    @abstractmethod
    def forward(self, batch: np.ndarray) -> NetOutput: ...

    @property
    def explain_method(self) -> Method | None:
        """How `explain` makes its maps; None when this runtime cannot (explain with torch)."""
        return None

    def explain(self, batch: np.ndarray) -> NetOutput:
        """`forward` with the maps of `piston.explain.class_map` (`NetOutput.maps`)."""
        raise NotImplementedError(f"the {self.name} runtime of this bundle gives no maps")


class TorchRuntime(Runtime):
    """The module in torch, wrapped in `piston.arch.Embedder` for its features; with a
    `novelty` scorer, its check runs after it as the torch module that `model.onnx` holds
    (`piston.novelty_head.NoveltyHead`), so both runtimes answer the same score."""

    name: ClassVar[RuntimeName] = "torch"

    def __init__(self, module: nn.Module, threads: int | None = None,
                 novelty: Scorer | None = None) -> None:
        from piston.arch import Embedder

        self.module = module
        self.embedder = Embedder(module)
        self.threads = threads
        self.novelty_head: NoveltyHead | None = None
        if novelty is not None:
            from piston.novelty_head import NoveltyHead

            self.novelty_head = NoveltyHead(novelty).eval()

    @classmethod
    def load(cls, model_dir: str | Path, meta: BundleMeta, threads: int | None = None,
             novelty: Scorer | None = None) -> TorchRuntime:
        import torch

        from piston import arch

        module = arch.build(meta.arch, len(meta.classes), meta.contract.height,
                            meta.contract.width, **meta.arch_params)
        state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        module.eval()
        return cls(module, threads, novelty)

    def forward(self, batch: np.ndarray) -> NetOutput:
        import torch

        self._threads()
        with torch.inference_mode():
            inputs = torch.from_numpy(batch)
            logits, features = self.embedder(inputs)
            return NetOutput(logits.numpy(), features.numpy(),
                             novelty=self._novelty(features, inputs))

    @property
    def explain_method(self) -> Method:
        return "cam" if self.feature_maps.linear else "grad_cam"

    def explain(self, batch: np.ndarray) -> NetOutput:
        import torch

        self._threads()
        taken = self.feature_maps(torch.from_numpy(batch))
        with torch.inference_mode():
            novelty = self._novelty(torch.from_numpy(taken.features), torch.from_numpy(batch))
        return NetOutput(taken.logits, taken.features, taken.maps, novelty)

    def _novelty(self, features: Any, inputs: Any) -> np.ndarray | None:
        """The novelty head's scores of (N, D) feature tensors and their (N, 3, H, W) inputs,
        when there is one."""
        if self.novelty_head is None:
            return None
        return self.novelty_head(features, inputs).numpy()

    @functools.cached_property
    def feature_maps(self) -> FeatureMaps:
        from piston.cam import FeatureMaps

        return FeatureMaps(self.embedder)

    def _threads(self) -> None:
        import torch

        # OpenMP keeps its thread count per calling thread: set it in whichever thread runs us
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def session_options(threads: int) -> Any:
    """ONNX Runtime's options for a small shared machine: `threads` intra-op threads that
    sleep when idle (a spinning pool competes with the event loop and the other workers,
    as torch's did), one graph at a time, every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are noise
    return options


class OnnxRuntime(Runtime):
    """The bundle's `model.onnx` in an ONNX Runtime CPU session.

    With `novelty` (the bundle has a novelty check) it also fetches the graph's `novelty`
    output when the graph has one.
    """

    name: ClassVar[RuntimeName] = "onnx"

    def __init__(self, session: Any, novelty: bool = True) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        missing = [name for name in OUTPUTS if name not in outputs]
        if missing:
            raise ValueError(f"model.onnx lacks the outputs {missing} (it has {outputs})")
        self.has_maps = MAPS in outputs  # exported before heatmaps, or a net without CAM
        # exported before the check moved into the graph, or a bundle without a check
        self.has_novelty = novelty and NOVELTY in outputs
        self.outputs = [*OUTPUTS, NOVELTY] if self.has_novelty else list(OUTPUTS)

    @classmethod
    def load(cls, path: str | Path, threads: int = 1, novelty: bool = True) -> OnnxRuntime:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        return cls(session, novelty)

    def forward(self, batch: np.ndarray) -> NetOutput:
        logits, features, *novelty = self.session.run(self.outputs, {self.input: batch})
        return NetOutput(logits, features, novelty=novelty[0] if novelty else None)

    @property
    def explain_method(self) -> Method | None:
        return "cam" if self.has_maps else None

    def explain(self, batch: np.ndarray) -> NetOutput:
        if not self.has_maps:
            return super().explain(batch)
        fetch = [*OUTPUTS, MAPS, *([NOVELTY] if self.has_novelty else [])]
        logits, features, maps, *novelty = self.session.run(fetch, {self.input: batch})
        return NetOutput(logits, features, maps, novelty[0] if novelty else None)


def load_runtime(model_dir: str | Path, meta: BundleMeta, kind: RuntimeName = DEFAULT_RUNTIME,
                 threads: int | None = None, novelty: Scorer | None = None) -> Runtime:
    """The bundle's network in `kind`; torch when it has no `model.onnx`. With the bundle's
    `novelty` scorer the runtime computes the check with the network: in the ONNX graph when
    it holds it, in torch after the network."""
    path = Path(model_dir) / ONNX_FILE
    if kind == "onnx":
        if path.is_file():
            return OnnxRuntime.load(path, threads or 1, novelty is not None)
        log.info("bundle %s has no %s: scoring with torch", meta.version, ONNX_FILE)
    return TorchRuntime.load(model_dir, meta, threads, novelty)
