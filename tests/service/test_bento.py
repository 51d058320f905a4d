"""Rollback by bento: two bentos built from two bundles each serve their own, pointer or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from tests.conftest import image_bytes
from tests.service.conftest import ROOT, Bundles, open_registry, running_server


def build_bento(version: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "bento", "build", "--version", version, "--json"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return str(json.loads(done.stdout)["bento"])


def test_each_bento_serves_the_bundle_it_was_built_with(
        bundles: Bundles, registry_dir: Path, tmp_path: Path) -> None:
    env = {"PISTON_REGISTRY": str(registry_dir), "PISTON_POLL_INTERVAL_S": "0.3"}
    tags = {v: build_bento(v, env) for v in (bundles.good, bundles.other)}
    assert tags == {v: f"piston-inspector:{v}" for v in tags}  # the bento version is the bundle's
    registry = open_registry(registry_dir)
    registry.promote(bundles.good, reason="production is the good one", force=True)
    with ExitStack() as stack:
        urls = {v: stack.enter_context(running_server(tag, env, tmp_path / f"{v}.log"))
                for v, tag in tags.items()}
        for version, url in urls.items():
            model = httpx.get(f"{url}/model", timeout=10).json()
            assert model["version"] == version and model["pinned"] == version
            assert model["follows_registry"] is False
            answer = httpx.post(f"{url}/classify", content=image_bytes(),
                                headers={"content-type": "image/jpeg"}, timeout=30).json()
            assert answer["model_version"] == version
        registry.promote(bundles.other, reason="pointer moves; bentos do not", force=True)
        registry.promote(bundles.good, reason="and back", force=True)
        registry.rollback(reason="once more")
        time.sleep(1.0)  # over three poll intervals: a following server would have swapped
        for version, url in urls.items():
            answer = httpx.post(f"{url}/classify", content=image_bytes(),
                                headers={"content-type": "image/jpeg"}, timeout=30).json()
            assert answer["model_version"] == version
