"""What every command needs from the settings: read once here, passed down as plain values."""

from __future__ import annotations

from piston.registry import Registry
from piston.settings import Settings
from piston.storage import open_storage


def open_registry(settings: Settings) -> Registry:
    return Registry(open_storage(settings.registry, settings.s3_endpoint_url))
