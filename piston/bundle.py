"""Model bundles: one immutable BentoML model per training run, and loading it back to score.

A bundle holds the weights (state_dict), the class names, the preprocessing contract, the
decision threshold, the training config, metrics and gate results, the report, the split
file lists, a fingerprint of the data and its lineage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from piston.calibration import Calibration
from piston.errors import ConfigError, RegistryError
from piston.figures import TrainingMetrics
from piston.imaging import Contract
from piston.novelty import NoveltyInfo, needs_inputs
from piston.novelty import load as load_novelty
from piston.runtime import (
    DEFAULT_RUNTIME,
    WEIGHTS_FILE,
    Runtime,
    RuntimeName,
    TorchRuntime,
    load_runtime,
)
from piston.scoring import NetOutput

if TYPE_CHECKING:
    import bentoml
    import numpy as np
    from torch import nn

    from piston.explain import Method
    from piston.scoring import NoveltyScorer

log = logging.getLogger(__name__)

MODEL_NAME = "piston-classifier"
META_FILE = "bundle.json"
# The layout of bundle.json. Bump it when a field changes meaning or goes; a bundle of another
# version is refused with a clear line (retrain it) instead of being read through shims.
SCHEMA_VERSION = 1


class Gate(BaseModel):
    """One quality gate: what was measured against what bar."""

    name: str
    value: float
    threshold: float
    passed: bool


def gates_passed(gates: Sequence[Gate]) -> bool:
    """The one definition: every gate passed, and there was at least one.

    An empty list means the bundle was never measured against a bar, so it is not
    production-ready: promoting it needs `force` and a reason, like a failed gate.
    """
    return bool(gates) and all(g.passed for g in gates)


class OnnxExport(BaseModel):
    """The bundle's `model.onnx` and how closely it agrees with the torch weights."""

    opset: int
    max_prob_diff: float  # max |p_onnx - p_torch| over the test split (calibrated)
    images: int  # test-split images compared
    labels_differ: int  # test-split images whose label differs
    export_seconds: float
    # max |map_onnx - map_torch| / the map's range, when the graph has class_maps (heatmaps)
    max_map_diff: float | None = None
    # max |n_onnx - n_torch| / n_torch of the novelty score, when the graph has `novelty`
    # (None: scored in numpy from the features, as bundles exported before it are)
    max_novelty_diff: float | None = None


class BundleMeta(BaseModel):
    """Everything about a bundle except its weights; stored as `bundle.json`."""

    schema_version: int = SCHEMA_VERSION
    version: str
    classes: list[str]
    arch: str
    arch_params: dict[str, Any] = Field(default_factory=dict)
    contract: Contract
    calibration: Calibration = Field(default_factory=Calibration)
    novelty: NoveltyInfo | None = None  # None: a bundle without a novelty check (older ones)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: TrainingMetrics = Field(default_factory=TrainingMetrics)
    gates: list[Gate] = Field(default_factory=list)
    data_fingerprint: str = ""
    parent: str | None = None
    code_version: str = ""
    created_at: str = ""

    onnx: OnnxExport | None = None  # None: no model.onnx, torch only
    archive_sha256: str | None = None  # set on the registry's copy only (see Registry.publish)

    @model_validator(mode="before")
    @classmethod
    def _same_schema(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(f"bundle.json has schema_version {data['schema_version']}, this code"
                             f" reads {SCHEMA_VERSION}")
        return data

    @classmethod
    def parse(cls, raw: str | bytes, where: str) -> BundleMeta:
        """A stored bundle.json; one that is not of this schema is a `RegistryError`, one line.

        Bundles written before `schema_version` existed (pre-release) have none: retrain them.
        """
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or "schema_version" not in data:
                raise ValueError("it has no schema_version (written before the first release)")
            return cls.model_validate(data)
        except (ValidationError, ValueError) as err:
            reason = (err.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                      if isinstance(err, ValidationError) else str(err))
            raise RegistryError(f"cannot read the bundle at {where}: {reason}; retrain it")\
                from None

    @property
    def threshold(self) -> float:
        """The global review threshold (classes may have their own: `calibration`)."""
        return self.calibration.threshold

    @property
    def gates_passed(self) -> bool:
        return gates_passed(self.gates)


    def summary(self) -> dict[str, Any]:
        """The short form shown by `models list` and stored beside the bundle in the registry."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "arch": self.arch,
            "classes": self.classes,
            "test_accuracy": self.metrics.accuracy,
            "macro_f1": self.metrics.macro_f1,
            **self.metrics.review(),
            "gates_passed": self.gates_passed,
            "parent": self.parent,
        }


def new_version(now: dt.datetime | None = None) -> str:
    """A readable, sortable version: UTC date, time and milliseconds, e.g. 20261122-081503-042."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


def code_version() -> str:
    """The git commit of the code that trained a bundle, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def create_bundle(meta: BundleMeta, state_dict: dict[str, Any], files: dict[str, Path]) -> str:
    """Write a new immutable BentoML model; `files` maps names inside it to files or folders."""
    import bentoml
    import torch

    labels = {"gates": "passed" if meta.gates_passed else "failed", "arch": meta.arch}
    summary = {k: v for k, v in meta.summary().items() if v is not None}
    with bentoml.models.create(
        f"{MODEL_NAME}:{meta.version}", labels=labels, metadata=summary
    ) as model:
        root = Path(model.path)
        torch.save(state_dict, root / WEIGHTS_FILE)
        (root / META_FILE).write_text(meta.model_dump_json(indent=2))
        for name, source in files.items():
            if source.is_dir():
                shutil.copytree(source, root / name)
            else:
                shutil.copy2(source, root / name)
    return meta.version


def local_model(version: str) -> bentoml.Model:
    """The bundle's model in the local BentoML store."""
    import bentoml

    try:
        return bentoml.models.get(f"{MODEL_NAME}:{version}")
    except bentoml.exceptions.NotFound:
        raise RegistryError(f"bundle {version} is not in the local model store") from None


def import_archive(version: str, data: bytes) -> Path:
    """Import an archive into the local store; refused (and removed) unless it holds `version`."""
    import bentoml

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / f"{version}.bentomodel"
        archive.write_bytes(data)
        try:
            model = bentoml.models.import_model(str(archive), input_format="tar")
        except bentoml.exceptions.BentoMLException as err:
            raise RegistryError(f"bundle {version} cannot be imported: {err}") from None
    if str(model.tag) != f"{MODEL_NAME}:{version}":
        bentoml.models.delete(str(model.tag))
        raise RegistryError(
            f"the archive of bundle {version} holds {model.tag}, not {MODEL_NAME}:{version}:"
            " refused"
        )
    return Path(model.path)


@contextlib.contextmanager
def local_store_lock() -> Iterator[None]:
    """One importer at a time per BentoML home, across processes (service and job workers)."""
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".piston-import.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_meta(model_dir: str | Path) -> BundleMeta:
    path = Path(model_dir) / META_FILE
    return BundleMeta.parse(path.read_bytes(), str(path))


class Predictor:
    """A loaded bundle: one forward pass gives logits and features (`NetOutput`), which
    `piston.scoring.decide` turns into calibrated, novelty-checked decisions.

    The network runs in a `Runtime` (ONNX Runtime or torch); a torch module is wrapped in
    a `TorchRuntime`. A loaded bundle's runtime computes the novelty score with the network
    when it can (`NetOutput.novelty`); `novelty` is the bundle's scorer all the same, for its
    threshold and for outputs without the score.
    """

    def __init__(self, meta: BundleMeta, module: nn.Module | Runtime,
                 novelty: NoveltyScorer | None = None) -> None:
        self.meta = meta
        self.runtime = module if isinstance(module, Runtime) else TorchRuntime(module)
        self.contract = meta.contract
        self.novelty = novelty
        self.model_dir: Path | None = None  # where it was loaded from (for explain on ONNX)
        self.threads: int | None = None

    @classmethod
    def load(cls, model_dir: str | Path, runtime: RuntimeName = DEFAULT_RUNTIME,
             threads: int | None = None) -> Predictor:
        """The bundle in `runtime` (torch when it has no model.onnx), `threads` intra-op."""
        meta = read_meta(model_dir)
        novelty = load_novelty(model_dir, meta.novelty) if meta.novelty else None
        predictor = cls(meta, load_runtime(model_dir, meta, runtime, threads, novelty), novelty)
        predictor.model_dir, predictor.threads = Path(model_dir), threads
        return predictor

    def forward(self, batch: np.ndarray, explain: bool = False) -> NetOutput:
        """Logits and features for a (N, 3, H, W) float32 batch; with `explain`, the class
        activation maps too (`NetOutput.maps`, see `piston.explain.class_map`)."""
        out = self.explainer.explain(batch) if explain else self.runtime.forward(batch)
        if out.novelty is None and self.novelty is not None and needs_inputs(self.novelty):
            # a check that reads the inputs, under a graph without it: numpy, with the batch
            out = dataclasses.replace(out, novelty=self.novelty.score(out.features, batch))
        return out

    @functools.cached_property
    def explainer(self) -> Runtime:
        """The runtime that gives the maps: the runtime itself (torch, or an ONNX graph
        exported with them), else the bundle's torch weights, loaded on the first explain (so
        that a worker that never explains never loads torch)."""
        if self.runtime.explain_method is not None:
            return self.runtime
        if self.model_dir is None:
            raise ConfigError("heatmaps need the bundle's torch weights: load it from its folder")
        log.info("bundle %s: model.onnx has no class maps, explaining with torch",
                 self.meta.version)
        return TorchRuntime.load(self.model_dir, self.meta, self.threads)

    @property
    def explain_method(self) -> Method:
        """cam, or grad_cam for a net whose head is not linear over the pooled maps."""
        method = self.explainer.explain_method
        assert method is not None  # the explainer is one that explains
        return method

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for a (N, 3, H, W) float32 batch."""
        return self.meta.calibration.probabilities(self.forward(batch).logits)
