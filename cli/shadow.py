"""`piston models shadow VERSION [--share 0.2] | --stop`, and what a move does to a shadow.

The spec and the figures live in Redis (`piston.shadow`): the API workers pick a new shadow up
within `PISTON_LIVE_FLUSH_S`. Without VERSION or --stop, prints the shadow's figures.
"""

from __future__ import annotations

import argparse
import logging

from cli.output import emit
from piston import shadow
from piston.errors import LiveStoreUnavailable, PistonError
from piston.names import NOTHING
from piston.registry import open_registry
from piston.settings import Settings, load_settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shadow", help="score a share of live images with a candidate too")
    p.add_argument("version", nargs="?", help="the candidate bundle (none: show the figures)")
    p.add_argument("--share", type=float, default=0.2, help="fraction of live images (0-1]")
    p.add_argument("--expect", metavar="VERSION",
                   help="production as you last saw it (default: as it is now)")
    p.add_argument("--stop", action="store_true", help="end the running shadow")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_shadow)


def run_shadow(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.stop and args.version:
        raise PistonError("give a VERSION to shadow, or --stop, not both")
    if args.stop:
        ended = shadow.end(settings.redis_url, "stopped from the CLI", settings.shadow_ttl_s)
        emit({"ended": ended.model_dump() if ended else None}, args.json,
             f"shadow of {ended.version} ended" if ended else "no shadow was running")
        return 0
    if args.version:
        registry = open_registry(settings)
        expected = args.expect or registry.current() or NOTHING
        spec = shadow.start(settings.redis_url, registry, args.version, args.share, expected,
                            settings.shadow_ttl_s)
        emit(spec.model_dump(), args.json,
             f"shadowing {spec.version} on {100 * spec.share:.0f}% of live images"
             f" (production: {spec.production})")
        return 0
    found = shadow.report(settings.redis_url, settings.shadow_samples)
    emit(found.model_dump(), args.json, describe(found))
    return 0


def describe(r: shadow.ShadowReport) -> str:
    """The figures for a person: the headline, the matrix, dropped images."""
    spec = r.spec
    if spec is None:
        return "no shadow"
    state = "running" if r.active else f"ended ({spec.ended_reason})"
    dropped = ", ".join(f"{n} {why}" for why, n in sorted(r.dropped.items())) or "0"
    lines = [f"shadow of {spec.version} vs {spec.production}: {state}", r.headline,
             f"offered {r.offered}, compared {r.compared}, dropped {dropped}, failed {r.failed}"]
    for prod, row in sorted(r.matrix.items()):
        lines.append(f"  production {prod}: " + ", ".join(
            f"candidate {cand} {n}" for cand, n in sorted(row.items())))
    return "\n".join(lines)


def before_move(settings: Settings) -> shadow.ShadowReport | None:
    """The shadow as it stands before a move (None without Redis: there is no shadow then)."""
    try:
        return shadow.report(settings.redis_url, 0)
    except LiveStoreUnavailable as err:
        log.debug("no shadow to end: %s", err)
        return None


def after_move(settings: Settings, before: shadow.ShadowReport | None, reason: str,
               promoted: str | None = None) -> str | None:
    """End the running shadow after a move; its headline when it shadowed `promoted`."""
    if before is None or not before.active or before.spec is None:
        return None
    try:
        shadow.end(settings.redis_url, reason, settings.shadow_ttl_s, before.spec.id)
    except LiveStoreUnavailable as err:  # the workers end it when they see production move
        log.warning("could not end the shadow: %s", err)
    return before.headline if before.spec.version == promoted else None
