"""What every command needs from the settings: read once at the command, passed down."""

from __future__ import annotations

from piston.registry import open_registry

__all__ = ["open_registry"]
