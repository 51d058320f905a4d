"""docker-compose.yml cannot run here (no Docker engine): check what can be checked. The file
parses; every service's command is a real `piston` command; every environment variable is a
setting we read; the settings they give point the services at each other; one beat only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from piston import preflight
from piston.errors import ConfigError
from piston.limits import check_job_paths
from piston.settings import Settings, load_settings

ROOT = Path(__file__).parents[2]
AWS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
BENTOML = {"BENTOML_HOME", "BENTOML_DO_NOT_TRACK"}
OTHERS = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise AssertionError(f"{name} is required: {arg}")
        return arg or ""
    return VARIABLE.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def setting_names() -> set[str]:
    return {f"PISTON_{name.upper()}" for name in Settings.model_fields}


def test_services_and_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"preflight", "minio", "minio-init", "bucket-init", "redis", "api",
                             "worker", "trainer", "beat", "flower"}
    minio = services["minio"]["image"]
    assert re.fullmatch(r"[\w./-]*minio/minio:RELEASE\.\d{4}-\d\d-\d\dT[\d-]+Z", minio), minio
    assert all(":" in s["image"] and not s["image"].endswith(":latest")
               for s in services.values() if "image" in s)
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["flower"]["profiles"] == ["flower"]  # optional
    assert "no longer maintained" in (ROOT / "docker-compose.yml").read_text()


def test_every_command_is_a_piston_command(compose: dict[str, Any]) -> None:
    from cli import jobs, serve

    services = compose["services"]
    parser = build_parser()
    expected = {"api": serve.run_serve, "worker": jobs.run_worker, "trainer": jobs.run_worker,
                "beat": jobs.run_beat}
    for name, handler in expected.items():
        command = services[name]["command"]
        assert command[0] == "piston"
        assert parser.parse_args(command[1:]).handler is handler, name
    assert services["bucket-init"]["command"][:3] == ["python", "-m", "piston.storage.s3"]


def real_secrets(example: dict[str, str]) -> dict[str, str]:
    """The example .env with every placeholder replaced, as an operator must."""
    def real(key: str, value: str) -> str:
        user = value.partition(":")[0] + ":" if key == "FLOWER_BASIC_AUTH" else ""
        return f"{user}{key.lower()}-" + "s3cr3t" * 5 if "change-me" in value else value
    return {k: real(k, v) for k, v in example.items()}


def test_environment_matches_the_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    example = real_secrets(dotenv(ROOT / ".env.example"))
    assert set(example) <= setting_names() | AWS | OTHERS, "unknown names in .env.example"
    for name in ("bucket-init", "api", "worker", "trainer", "beat"):
        raw = services[name]["environment"]
        assert set(raw) <= setting_names() | AWS | BENTOML, name
        env = {k: interpolate(str(v), example) for k, v in raw.items()}
        settings = _settings(env)
        assert settings.redis_url == f"redis://:{example['REDIS_PASSWORD']}@redis:6379/0"
        assert settings.s3_endpoint_url == "http://minio:9000"
        bucket = services["bucket-init"]["command"][-1]
        assert settings.registry.startswith(bucket + "/")
        assert settings.score_schedule  # the example schedule parses as JSON
        for src, out in settings.score_schedule.items():  # and lies under the job roots
            check_job_paths(settings, src, out)
        check_job_paths(settings, settings.data_dir, settings.results_dir + "/x")
        for key in AWS:
            assert env[key]
    # without a schedule in .env, compose passes an empty value: no schedule, not an error
    unset = {k: v for k, v in example.items() if k != "PISTON_SCORE_SCHEDULE"}
    env = {k: interpolate(str(v), unset) for k, v in services["beat"]["environment"].items()}
    assert _settings(env).score_schedule == {}
    # the services never use MinIO's root user: minio-init makes them their own
    minio_env = {k: interpolate(v, example) for k, v in services["minio"]["environment"].items()}
    assert minio_env["MINIO_ROOT_USER"] != example["AWS_ACCESS_KEY_ID"]
    init = services["minio-init"]
    assert re.fullmatch(r"[\w./-]*minio/mc:RELEASE\.[\dT-]+Z", init["image"])
    assert "mc admin policy attach local piston-rw" in init["command"][0]


def test_only_the_api_is_published(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert published["api"] == ["3000:3000"]
    others = [p for name, ports in published.items() if name != "api" for p in ports]
    assert others and all(p.startswith("127.0.0.1:") for p in others)
    flower = compose["services"]["flower"]["environment"]
    assert "FLOWER_BASIC_AUTH" in flower and "REDIS_PASSWORD" in flower["CELERY_BROKER_URL"]
    assert "--requirepass" in " ".join(compose["services"]["redis"]["command"])


def test_placeholder_secrets_are_refused_at_start_up(compose: dict[str, Any]) -> None:
    """The example .env as shipped: every service refuses to start, saying what to set."""
    example = dotenv(ROOT / ".env.example")
    raw = compose["services"]["api"]["environment"]
    env = {k: interpolate(str(v), example) for k, v in raw.items()}
    with pytest.raises(ConfigError, match="PISTON_ADMIN_TOKEN is a placeholder or shorter than 24"):
        _settings(env)
    for name, value, message in (
        ("PISTON_ADMIN_TOKEN", "short-but-real", "shorter than 24"),
        ("PISTON_REDIS_URL", "redis://:change-me@redis:6379/0", "PISTON_REDIS_URL is a place"),
        ("AWS_SECRET_ACCESS_KEY", "minioadmin", "AWS_SECRET_ACCESS_KEY is a placeholder"),
    ):
        fixed = {**{k: interpolate(str(v), real_secrets(example)) for k, v in raw.items()},
                 name: value}
        with pytest.raises(ConfigError, match=message):
            _settings(fixed)
    result = subprocess.run([sys.executable, "-m", "cli.main", "models", "current"],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: bad setting: PISTON_ADMIN")


def _settings(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("PISTON_")]:
            del os.environ[key]
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_preflight_refuses_placeholder_minio_and_flower_secrets(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("minio", "flower"):  # neither starts before the preflight has passed
        assert services[name]["depends_on"]["preflight"] == {
            "condition": "service_completed_successfully"}, name
    assert services["preflight"]["command"] == ["python", "-m", "piston.preflight"]
    example = dotenv(ROOT / ".env.example")
    raw = services["preflight"]["environment"]
    shipped = {k: interpolate(str(v), example) for k, v in raw.items()}
    assert [line.split()[0] for line in preflight.problems(shipped)] == [
        "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH"]
    real = {k: interpolate(str(v), real_secrets(example)) for k, v in raw.items()}
    assert preflight.problems(real) == []
    for name, value in (("MINIO_ROOT_PASSWORD", "minioadmin"), ("MINIO_ROOT_PASSWORD", "short"),
                        ("FLOWER_BASIC_AUTH", "admin:admin"), ("FLOWER_BASIC_AUTH", "nocolon")):
        assert [p.split()[0] for p in preflight.problems({**real, name: value})] == [name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PISTON_")}
    result = subprocess.run([sys.executable, "-m", "piston.preflight"], env={**env, **shipped},
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line.split()[1] for line in lines] == [
        "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH", "bad"], lines  # then the settings' own
    passed = subprocess.run([sys.executable, "-m", "piston.preflight"], env={**env, **real},
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert passed.returncode == 0, passed.stderr


def test_the_image_runs_as_a_non_root_user() -> None:
    lines = [line.split(None, 1) for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    instructions = [(words[0].upper(), words[1] if len(words) > 1 else "") for words in lines
                    if words[0].isupper()]
    users = [i for i, (op, _) in enumerate(instructions) if op == "USER"]
    assert users, "the Dockerfile never leaves root"
    last_user = instructions[users[-1]][1].strip()
    assert last_user.split(":")[0] not in ("root", "0")
    assert all(op not in ("RUN", "USER") for op, _ in instructions[users[-1] + 1:])
    assert instructions[-1][0] == "CMD"


def test_the_stack_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "stack")], check=True)
