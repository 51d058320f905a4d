"""The novelty check's cost where a server pays it: ONNX forward pass + `decide`, in-process.

    python bench/novelty_serving.py [--bundle BUNDLE_DIR] [--reps 2000] [--batches 1 4]

Three or four predictors on one bundle's weights, one ONNX thread each, as a server's
inference thread runs them: `off` (the graph without the check, no check), `graph` (the check
inside model.onnx, output `novelty`: what bundles carry now), `numpy` (the graph without it
and the check scored in numpy from the features by `decide`: bundles exported before), and
for a check with the channels check, `graph-features` (the graph with the feature checks
alone). Each call is timed alone; they alternate in blocks of 50 calls, so the machine's other
load falls on all alike. Prints per batch size the median time per call and the mean of the
fastest 99% (a process paused by the machine's other work shows as a few calls of seconds),
and each one's excess over `off`. Without `--bundle` it trains one as bench/serve.py does
(bn_cnn, 12 epochs). The graphs are exported from the bundle's weights and its fitted check,
so any bundle with a novelty check will do.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from piston.bundle import Predictor, read_meta  # noqa: E402
from piston.imaging import preprocess  # noqa: E402
from piston.novelty import ChannelScorer, CombinedScorer, needs_inputs  # noqa: E402
from piston.novelty import load as load_novelty  # noqa: E402
from piston.runtime import OnnxRuntime, TorchRuntime  # noqa: E402
from piston.scoring import decide  # noqa: E402
from training.onnx_export import export_bundle_onnx  # noqa: E402

BLOCK = 50  # calls per variant before switching


def predictors(model_dir: str, work: Path) -> dict[str, Predictor]:
    meta = read_meta(model_dir)
    if meta.novelty is None:
        raise SystemExit(f"bundle {meta.version} has no novelty check")
    scorer = load_novelty(model_dir, meta.novelty)
    module = TorchRuntime.load(model_dir, meta).module
    with_check, without = work / "with.onnx", work / "without.onnx"
    export_bundle_onnx(module, meta.contract, with_check, scorer)
    export_bundle_onnx(module, meta.contract, without)
    off = meta.model_copy(update={"novelty": None})
    found = {"off": Predictor(off, OnnxRuntime.load(without, 1, novelty=False)),
             "graph": Predictor(meta, OnnxRuntime.load(with_check, 1), scorer),
             "numpy": Predictor(meta, OnnxRuntime.load(without, 1), scorer)}
    if isinstance(scorer, CombinedScorer) and needs_inputs(scorer):
        # the checks on the features alone, in the graph: what the channels check adds
        features_only = CombinedScorer([p for p in scorer.parts
                                        if not isinstance(p, ChannelScorer)])
        export_bundle_onnx(module, meta.contract, work / "features.onnx", features_only)
        found["graph-features"] = Predictor(meta, OnnxRuntime.load(work / "features.onnx", 1),
                                            features_only)
    return found


def timed(predictors: dict[str, Predictor], batch: np.ndarray, reps: int
          ) -> dict[str, np.ndarray]:
    """Seconds per forward + decide call of each predictor, `reps` each, alternating."""
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for p in predictors.values():  # warm up: first runs allocate
        for _ in range(20):
            decide(p, p.forward(batch))
    for _ in range(0, reps, BLOCK):
        for name, p in predictors.items():
            for _ in range(BLOCK):
                start = time.perf_counter()
                decide(p, p.forward(batch))
                times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def trimmed_mean(seconds: np.ndarray) -> float:
    return float(np.sort(seconds)[:max(1, int(len(seconds) * 0.99))].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a fetched bundle folder (default: train one)")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="piston-novelty-serving-"))
    model_dir = args.bundle
    data = os.environ.get("PISTON_DATA_DIR", str(ROOT.parent / "shared/data/ac-pistons"))
    if model_dir is None:
        spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench/serve.py")
        assert spec is not None and spec.loader is not None
        serve = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(serve)
        data, work, env = serve.bench_env("piston-novelty-serving-")
        model_dir = serve.ensure_bundle(env["PISTON_REGISTRY"], data)
    found = predictors(model_dir, work)
    contract = found["off"].contract
    images = [preprocess(p.read_bytes(), contract, 40_000_000)
              for p in sorted(Path(data).glob("*/*.jp*g"))[:max(args.batches)]]
    print(f"bundle {model_dir}, load average before {os.getloadavg()}", flush=True)
    for n in args.batches:
        times = timed(found, np.stack(images[:n]), args.reps)
        base_median, base_mean = np.median(times["off"]), trimmed_mean(times["off"])
        for name, t in times.items():
            print(f"batch {n}  {name:14s}  median {np.median(t) * 1e3:.3f} ms"
                  f" ({np.median(t) / base_median - 1:+.1%})  mean of fastest 99%"
                  f" {trimmed_mean(t) * 1e3:.3f} ms ({trimmed_mean(t) / base_mean - 1:+.1%})"
                  f"  calls {len(t)}", flush=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
