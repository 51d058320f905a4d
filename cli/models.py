"""`piston models list | show | promote | rollback | current | history | shadow`."""

from __future__ import annotations

import argparse

from cli import shadow
from cli.output import emit, table
from piston.registry import open_registry
from piston.settings import load_settings

EXPECT_HELP = ("refuse unless production is at this version now ('none': nothing in"
               " production yet); guards against a stale or repeated move")


def register(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list bundles, promote and roll back")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("list", run_list, "every bundle in the registry"),
        ("current", run_current, "the version in production"),
        ("history", run_history, "every promote and rollback, oldest first"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=handler)
    show = sub.add_parser("show", help="one bundle's metadata, metrics and gates")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run_show)
    promote = sub.add_parser("promote", help="put a bundle in production")
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why (kept in the history)")
    promote.add_argument("--force", action="store_true", help="promote despite failed gates")
    promote.add_argument("--expect", metavar="VERSION", help=EXPECT_HELP)
    promote.add_argument("--json", action="store_true")
    promote.set_defaults(handler=run_promote)
    rollback = sub.add_parser("rollback", help="return production to the previous bundle")
    rollback.add_argument("--to", help="a named version instead of the previous one")
    rollback.add_argument("--reason", required=True, help="why (kept in the history)")
    rollback.add_argument("--expect", metavar="VERSION", help=EXPECT_HELP)
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(handler=run_rollback)
    shadow.register(sub)


def run_list(args: argparse.Namespace) -> int:
    rows = open_registry(load_settings()).bundles()
    columns = ["version", "arch", "test_accuracy", "macro_f1", "review_share", "accepted_accuracy",
               "ece", "gates_passed", "production"]
    emit(rows, args.json, table(rows, columns) if rows else "no bundles yet: run `piston train`")
    return 0


def run_show(args: argparse.Namespace) -> int:
    meta = open_registry(load_settings()).meta(args.version)
    emit(meta.model_dump(mode="json"), True)
    return 0


def run_current(args: argparse.Namespace) -> int:
    current = open_registry(load_settings()).current()
    emit({"production": current}, args.json, current or "nothing in production yet")
    return 0 if current else 1


def run_history(args: argparse.Namespace) -> int:
    moves = [m.model_dump() for m in open_registry(load_settings()).history()]
    columns = ["seq", "at", "action", "previous", "version", "by", "reason"]
    emit(moves, args.json, table(moves, columns) if moves else "no moves yet")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    settings = load_settings()
    before = shadow.before_move(settings)
    move = open_registry(settings).promote(
        args.version, args.reason, force=args.force, expected=args.expect)
    evidence = shadow.after_move(settings, before, f"promoted {move.version}", move.version)
    emit({**move.model_dump(), "shadow": evidence}, args.json,
         f"production: {move.previous} -> {move.version}"
         + (f" (shadow: {evidence})" if evidence else ""))
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    settings = load_settings()
    before = shadow.before_move(settings)
    move = open_registry(settings).rollback(args.reason, to=args.to, expected=args.expect)
    shadow.after_move(settings, before, f"rolled back to {move.version}")
    emit(move.model_dump(), args.json, f"production rolled back: {move.previous} -> {move.version}")
    return 0
