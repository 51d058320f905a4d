"""`piston serve` (start the prediction service) and `piston bento build` (a pinned bento)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from cli.output import emit
from piston.bundle import MODEL_NAME
from piston.errors import PistonError, RegistryError
from piston.registry import open_registry
from piston.settings import load_settings

SERVICE = "service.app:PistonInspector"
ROOT = Path(__file__).resolve().parent.parent


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the production bundle over HTTP (BentoML)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes, each with its own model copy (default 1)")
    serve.add_argument("--bento", help="serve a built bento tag instead of the source tree")
    serve.set_defaults(handler=run_serve)
    bento = commands.add_parser("bento", help="build a bento pinned to the production bundle")
    sub = bento.add_subparsers(dest="bento_command", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="build piston-inspector:<bundle version>")
    build.add_argument("--version", help="a bundle version instead of production")
    build.add_argument("--json", action="store_true")
    build.set_defaults(handler=run_build)


def serve_command(target: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]


def run_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not args.bento and open_registry(settings).current() is None:
        raise RegistryError(
            f"no bundle is in production in {settings.registry}: run `piston train --promote`"
            " (or `bash scripts/serve`, which trains one from PISTON_DATA_DIR)")
    env = dict(os.environ)
    # The server runs from the source tree: local paths must mean what they meant here.
    for name, value in (("PISTON_REGISTRY", settings.registry),
                        ("PISTON_DATA_DIR", settings.data_dir),
                        ("PISTON_RUNS_DIR", str(settings.runs_dir))):
        if "://" not in value:
            env[name] = str(Path(value).resolve())
    if args.workers != 1:
        if args.workers < 1:
            raise PistonError("--workers must be at least 1")
        option = f'services."piston-inspector".workers={args.workers}'
        env["BENTOML_CONFIG_OPTIONS"] = f"{env.get('BENTOML_CONFIG_OPTIONS', '')} {option}".strip()
    command = serve_command(args.bento or SERVICE, args.host, args.port)
    os.chdir(ROOT)
    os.execve(sys.executable, command, env)
    return 0  # not reached


def run_build(args: argparse.Namespace) -> int:
    import bentoml

    settings = load_settings()
    registry = open_registry(settings)
    version = args.version or registry.production("promote one or pass --version")
    registry.fetch(version)  # into the local model store, so the bento can include it
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    config.pop("service")
    config["labels"] = {**config.get("labels", {}), "bundle": version}
    bento = bentoml.bentos.build(SERVICE, models=[f"{MODEL_NAME}:{version}"], version=version,
                                 build_ctx=str(ROOT), **config)
    emit({"bento": str(bento.tag), "bundle": version}, args.json,
         f"built bento {bento.tag} (serves bundle {version});"
         f" run it with `piston serve --bento {bento.tag}`")
    return 0
