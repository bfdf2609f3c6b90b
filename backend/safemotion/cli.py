"""The `safemotion` command line: one sub-command per job, each a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _data_build(args: argparse.Namespace) -> int:
    from safemotion.data.dataset_builder import build_dataset

    stats = build_dataset(
        out=args.out,
        shared_data=args.shared_data,
        bvh_dir=args.bvh_dir,
        captions_csv=args.captions,
        seed=args.seed,
        workers=args.workers,
        include=set(args.include) if args.include else None,
    )
    print(json.dumps(stats.to_json(), indent=2))
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from safemotion.data.concept_splits import write_concept_splits

    counts = write_concept_splits(args.data, args.concept, args.rule)
    print(json.dumps(counts, indent=2))
    return 0


def _import_momask(args: argparse.Namespace) -> int:
    from safemotion.models.momask_import import import_momask

    out = import_momask(args.checkpoints, args.out)
    print(f"wrote model directory {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="safemotion", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build datasets and forget/retain splits")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    build = data_commands.add_parser("build", help="build a HumanML3D-layout dataset from mocap sources")
    build.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    build.add_argument("--shared-data", type=Path, help="folder with the Bandai/CMU/DeepMimic sources (shared/data)")
    build.add_argument("--bvh-dir", type=Path, help="your own folder of BVH files")
    build.add_argument("--captions", type=Path, help="CSV with columns file,caption for --bvh-dir")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--workers", type=int, default=2)
    build.add_argument("--include", nargs="*", help="only these sources (bandai, iclone, deepmimic, fbx, user)")
    build.set_defaults(func=_data_build)

    split = data_commands.add_parser("split", help="write forget/retain id lists for a concept")
    split.add_argument("--data", type=Path, required=True, help="dataset folder")
    split.add_argument("--concept", default="violence")
    split.add_argument("--rule", choices=("paper", "word_boundary"), default="word_boundary")
    split.set_defaults(func=_data_split)

    momask = commands.add_parser("import-momask", help="convert official MoMask checkpoints to a model directory")
    momask.add_argument("--checkpoints", type=Path, required=True, help="official checkpoints folder (checkpoints/t2m)")
    momask.add_argument("--out", type=Path, required=True, help="model directory to create")
    momask.set_defaults(func=_import_momask)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `safemotion` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"safemotion: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
