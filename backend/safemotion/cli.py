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


def _generate(args: argparse.Namespace) -> int:
    from safemotion.decoding import SamplingConfig
    from safemotion.generate import DEFAULT_MODEL_DIR, GenerationRequest, Generator, output_paths, save_bvh, save_npz

    writers = {".npz": save_npz, ".bvh": save_bvh}
    suffix = args.out.suffix.lower()
    if suffix not in writers:
        raise ValueError(f"--out {args.out}: unknown file type '{suffix}'; use .npz or .bvh")
    request = GenerationRequest(args.prompt, seconds=args.seconds, seed=args.seed, variations=args.variations)
    request.validate()
    sampling = SamplingConfig(time_steps=args.steps, cond_scale=args.cond_scale,
                              residual_cond_scale=args.residual_cond_scale, temperature=args.temperature,
                              gumbel_sample=args.gumbel)
    sampling.validate()
    generator = Generator.from_dir(args.model or DEFAULT_MODEL_DIR, device=args.device, sampling=sampling,
                                   clip_weights=args.clip_weights, clip_vocab=args.clip_vocab)
    motions = generator.generate([request])
    written = []
    for motion, path in zip(motions, output_paths(args.out, len(motions))):
        writers[suffix](motion, path)
        written.append({"file": str(path), "seed": motion.seed, "frames": motion.num_frames,
                        "seconds": motion.seconds, "length_from": motion.length_from})
    print(json.dumps(written, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from safemotion.models.config import ModelConfig
    from safemotion.train import TrainOptions, preset, run_stage, with_text_encoder

    config = None
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"--config {args.config}: file not found")
        try:
            data = json.loads(args.config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{args.config}:{err.lineno}: invalid JSON: {err.msg}") from None
        config = ModelConfig.from_dict(data, where=str(args.config))
    elif args.preset is not None:
        config = preset(args.preset)
    if args.text_encoder is not None:
        config = with_text_encoder(config or preset("official"), args.text_encoder)
    if config is not None and args.stage != "vq":
        raise ValueError("--config, --preset and --text-encoder only apply to the 'vq' stage, which creates the model "
                         "directory")
    milestones = None
    if args.milestones is not None:
        try:
            milestones = tuple(int(m) for m in args.milestones.split(",") if m.strip())
        except ValueError:
            raise ValueError(f"--milestones {args.milestones!r}: expected comma-separated iteration numbers") from None
    options = TrainOptions(
        data=args.data, out=args.out, work=args.work, config=config, split=args.split, window_size=args.window_size,
        seed=args.seed, device=args.device, resume=args.resume, checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
        warmup_iters=args.warmup_iters, milestones=milestones, gamma=args.gamma,
        clip_weights=args.clip_weights, clip_vocab=args.clip_vocab,
    )
    result = run_stage(args.stage, options)
    tail = result.losses[-100:]
    print(json.dumps({"stage": args.stage, "iterations": result.iterations, "model_dir": str(args.out),
                      "mean_loss_last_100": sum(tail) / len(tail) if tail else None, **result.metrics}, indent=2))
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

    generate = commands.add_parser("generate", help="generate motion from a text prompt")
    generate.add_argument("prompt", help="what the person does (1-300 characters)")
    generate.add_argument("--model", type=Path, help="model directory (default: the embedded safemotion-mini)")
    generate.add_argument("--seconds", type=float, help="duration, 0.5-9.8 s (default: estimated from the prompt)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--variations", type=int, default=1,
                          help="motions to generate, 1-16 (variation k uses seed + k)")
    generate.add_argument("--out", type=Path, required=True, help=".npz (joints, SMPL, tokens) or .bvh (SMPL "
                          "skeleton); several variations get _1, _2, ... suffixes")
    generate.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    generate.add_argument("--steps", type=int, default=10, help="masked decoding steps")
    generate.add_argument("--cond-scale", type=float, default=4.0, help="guidance scale of the base layer")
    generate.add_argument("--residual-cond-scale", type=float, default=5.0, help="guidance of the residual layers")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--gumbel", action="store_true", help="Gumbel-max instead of categorical sampling")
    generate.add_argument("--clip-weights", type=Path, help="CLIP ViT-B/32 weights (models using the clip encoder)")
    generate.add_argument("--clip-vocab", type=Path, help="CLIP BPE merges file")
    generate.set_defaults(func=_generate)

    train = commands.add_parser("train", help="train one stage (vq, mask, residual, length) into a model directory")
    train.add_argument("stage", choices=("vq", "mask", "residual", "length"))
    train.add_argument("--data", type=Path, required=True, help="HumanML3D-layout dataset folder")
    train.add_argument("--out", type=Path, required=True, help="model directory ('vq' creates it)")
    train.add_argument("--work", type=Path, help="checkpoints and caches (default: <out>.training)")
    train.add_argument("--config", type=Path, help="model config JSON (vq stage, new model directory)")
    train.add_argument("--preset", help="model size: official or mini (vq stage, new model directory)")
    train.add_argument("--text-encoder", choices=("clip", "minilm"), help="override the config's text encoder")
    train.add_argument("--split", default="train")
    train.add_argument("--iters", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--warmup-iters", type=int)
    train.add_argument("--milestones", help="comma-separated iterations where lr is multiplied by --gamma")
    train.add_argument("--gamma", type=float)
    train.add_argument("--window-size", type=int, default=64, help="VQ training window in frames")
    train.add_argument("--seed", type=int, default=3407)
    train.add_argument("--device", default="auto")
    train.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    train.add_argument("--checkpoint-every", type=int, default=1000)
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--clip-weights", type=Path)
    train.add_argument("--clip-vocab", type=Path)
    train.set_defaults(func=_train)
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
