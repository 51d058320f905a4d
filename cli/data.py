"""`piston data check PATH` and `piston data fetch`."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.output import emit
from piston.settings import load_settings
from training.config import load_config
from training.dataset import parse_class_map
from training.fetch import DEFAULT_URL, fetch_dataset


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="check or fetch a data set")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="counts, balance, bad files and duplicates of a data set")
    check.add_argument("path", nargs="?", help="data set folder, CSV manifest or s3:// prefix")
    check.add_argument("--classes", help="target-to-name mapping for a manifest: 0=a,1=b")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=run_check)
    fetch = sub.add_parser("fetch", help="download the public piston data set")
    fetch.add_argument("--dest", help="where to put it (default: PISTON_DATA_DIR)")
    fetch.add_argument("--url", default=DEFAULT_URL, help="archive to download")
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(handler=run_fetch)


def run_check(args: argparse.Namespace) -> int:
    from training.prepare import prepare

    settings = load_settings()
    prepared = prepare(args.path or settings.data_dir, load_config(), settings.max_image_pixels,
                       class_map=parse_class_map(args.classes),
                       s3_endpoint_url=settings.s3_endpoint_url)
    figures = prepared.report.figures()
    lines = [f"{figures.images} images in {len(prepared.classes)} classes"]
    lines += [f"  {name}: {n}" for name, n in figures.counts.items()]
    lines.append(
        f"{figures.near_duplicate_groups} near-duplicate groups"
        f" (largest {figures.largest_near_duplicate_group},"
        f" {figures.images_in_groups_over_10} images in groups over 10; linked under distance"
        f" {figures.near_duplicate_bar:.5f}), {len(figures.exact_duplicates)} sets of"
        f" byte-identical images; input size {list(prepared.decoded.size)}")
    lines += [f"label conflict: {c.keys[0]} ({c.classes[0]}) vs {c.keys[1]} ({c.classes[1]})"
              for c in prepared.report.conflicts]
    lines += [f"excluded {k}: {r}" for k, r in prepared.report.excluded]
    lines += [f"warning: {w}" for w in prepared.report.warnings]
    lines += [f"note: {n}" for n in prepared.report.notes]
    report = figures.model_dump() | {"classes": prepared.classes,
                                     "input_size": list(prepared.decoded.size)}
    emit(report, args.json, "\n".join(lines))
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    settings = load_settings()
    dest = Path(args.dest or settings.data_dir)
    counts = fetch_dataset(args.url, dest)
    emit(
        {"dest": str(dest), "counts": counts},
        args.json,
        f"fetched {sum(counts.values())} images into {dest}: {counts}",
    )
    return 0
