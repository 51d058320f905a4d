"""`python -m piston.preflight`: the compose stack's first step, refusing placeholder secrets.

The piston services refuse placeholders in their own settings (admin token, Redis password,
S3 secret); MinIO's root password and Flower's basic auth are read by other programs, so
this step checks them, and the settings, before MinIO or Flower start.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from piston.errors import ConfigError
from piston.settings import is_placeholder, load_settings

MIN_SECRET_CHARS = 12
# variable -> how to read the secret out of its value
SECRETS = {"MINIO_ROOT_PASSWORD": lambda v: v,
           "FLOWER_BASIC_AUTH": lambda v: v.partition(":")[2]}


def problems(env: Mapping[str, str]) -> list[str]:
    """One line per secret that is missing, a placeholder or too short."""
    found = []
    for name, secret_of in SECRETS.items():
        secret = secret_of(env.get(name, ""))
        if is_placeholder(secret) or len(secret) < MIN_SECRET_CHARS:
            found.append(f"{name} is unset, a placeholder or shorter than {MIN_SECRET_CHARS}"
                         " characters: set a random one (e.g. `openssl rand -hex 24`)")
    return found


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = problems(os.environ)
    try:
        load_settings()
    except ConfigError as err:
        found.append(str(err))
    for line in found:
        sys.stderr.write(f"error: {line}\n")
    if not found:
        logging.getLogger(__name__).info("preflight: no placeholder secrets")
    return 2 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
