"""The `safemotion` command line: one sub-command per job, each a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from safemotion.unlearn.commands import add_unlearn_commands
from safemotion.unlearn.policies import DEFAULT_POLICY, POLICIES
from safemotion.unlearn.prompt_sets import PROMPT_SETS

PRECISION_HELP = ("token transformers in fp32 (default), bf16 (faster on GPUs and on CPUs with AVX512-BF16 or AMX; "
                  "refused where it would be emulated) or int8 (CPU: dynamically quantized linears); bf16 and int8 "
                  "give slightly different motions for a seed")


def _data_build(args: argparse.Namespace) -> int:
    from safemotion.data.dataset_builder import build_dataset

    # SIGTERM unwinds like Ctrl-C, so the build stops its workers and removes its temporary folder
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        stats = build_dataset(
            out=args.out,
            shared_data=args.shared_data,
            bvh_dir=args.bvh_dir,
            captions_csv=args.captions,
            seed=args.seed,
            workers=args.workers,
            include=set(args.include) if args.include else None,
            strict=args.strict,
            motionx=args.motionx,
            smplx_model=args.smplx_model,
        )
    except (KeyboardInterrupt, SystemExit) as stop:
        # Unwinding has stopped the workers and removed the temporary folder. Leave without the interpreter's exit
        # handlers: the worker pool's one joins its manager thread, which can wait forever on a worker killed mid-take.
        print("safemotion: interrupted; nothing was written", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130 if isinstance(stop, KeyboardInterrupt) else int(stop.code or 1))
    print(stats.to_json())
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from safemotion.data.concept_splits import write_concept_splits

    counts = write_concept_splits(args.data, args.concept, args.rule)
    print(json.dumps(counts, indent=2))
    return 0


def _import_momask(args: argparse.Namespace) -> int:
    from safemotion.models.momask_import import import_momask

    out = import_momask(args.checkpoints, args.out, bamm=args.bamm)
    print(f"wrote model directory {out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from safemotion.generate import DEFAULT_MODEL_DIR, GenerationRequest
    from safemotion.safe_generation import SafeGenerator

    _check_out(args.out)
    request = GenerationRequest(args.prompt, seconds=args.seconds, seed=args.seed, variations=args.variations,
                                foot_cleanup=not args.no_foot_cleanup)
    request.validate()
    generator = SafeGenerator.from_dir(args.model or DEFAULT_MODEL_DIR, device=args.device, sampling=_sampling(args),
                                       clip_weights=args.clip_weights, clip_vocab=args.clip_vocab)
    _write_results(generator.generate([request], policy=args.policy)[0], args.out)
    return 0


def _check_out(out: Path) -> None:
    suffix = out.suffix.lower()
    if suffix not in (".npz", ".bvh"):
        raise ValueError(f"--out {out}: unknown file type '{suffix}'; use .npz or .bvh")


def _write_results(results: list, out: Path) -> None:
    """Write each motion that was not blocked (variations get _1, _2, ... suffixes) and print what was written."""
    from safemotion.generate import output_paths, save_bvh, save_npz

    written = []
    for item, path in zip(results, output_paths(out, len(results))):
        motion, safety = item.motion, None if item.safety is None else item.safety.to_dict()
        entry = {"file": None if item.blocked else str(path), "seed": item.seed,
                 "frames": None if motion is None else motion.num_frames,
                 "seconds": None if motion is None else motion.seconds,
                 "length_from": None if motion is None else motion.length_from,
                 "foot_cleanup": motion is not None and motion.foot_cleanup is not None, "safety": safety,
                 "seams": None if motion is None or motion.seams is None else motion.seams.to_dict()}
        if item.blocked:
            print(f"variation {item.variation} (seed {item.seed}) not written: {item.safety.reason}",
                  file=sys.stderr)
        else:
            save_npz(motion, path, safety=safety) if out.suffix.lower() == ".npz" else save_bvh(motion, path)
        for warning in [] if entry["seams"] is None else entry["seams"]["warnings"]:
            print(f"variation {item.variation} (seed {item.seed}): {warning}", file=sys.stderr)
        written.append(entry)
    print(json.dumps(written, indent=2))


def _sampling(args: argparse.Namespace):
    from safemotion.decoding import SamplingConfig

    sampling = SamplingConfig(time_steps=args.steps, cond_scale=args.cond_scale,
                              residual_cond_scale=args.residual_cond_scale,
                              refine_cond_scale=args.refine_cond_scale, temperature=args.temperature,
                              gumbel_sample=args.gumbel, precision=args.precision)
    sampling.validate()
    return sampling


def _frame_span(text: str) -> tuple[int, int]:
    """'40:80' → (40, 80)."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame span; write START:END, e.g. 40:80 (end "
                                         "exclusive)") from None


def _edit(args: argparse.Namespace) -> int:
    from safemotion.edit import EditSettings, Editor, load_source
    from safemotion.generate import DEFAULT_MODEL_DIR
    from safemotion.safe_generation import SafeGenerator

    _check_out(args.out)
    if (args.source is None) == (args.between is None):
        raise ValueError("give either SOURCE (with --frames or --extend) or --between A B, not both")
    if args.between is None and (args.frames is None) == (args.extend is None):
        raise ValueError("give exactly one of --frames START:END (regenerate) or --extend SECONDS")
    if args.between is not None and args.seconds is None:
        raise ValueError("--between needs --seconds, the length of the transition")
    sources = [load_source(path) for path in ([args.source] if args.between is None else args.between)]
    editor = Editor(SafeGenerator.from_dir(args.model or DEFAULT_MODEL_DIR, device=args.device,
                                           sampling=_sampling(args), clip_weights=args.clip_weights,
                                           clip_vocab=args.clip_vocab),
                    EditSettings(margin_tokens=args.margin, blend_frames=args.blend,
                                 **({} if args.seam_limit is None else {"seam_limit": args.seam_limit})))
    common = {"seed": args.seed, "variations": args.variations, "policy": args.policy}
    if args.between is not None:
        results = editor.inbetween(sources[0], sources[1], args.seconds, args.prompt, **common)
    elif args.frames is not None:
        results = editor.edit(sources[0], args.frames, args.prompt, **common)
    else:
        results = editor.extend(sources[0], args.extend, args.prompt, at=args.at, **common)
    _write_results(results, args.out)
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.stage == "evaluator":
        return _train_evaluator(args)
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
        clip_weights=args.clip_weights, clip_vocab=args.clip_vocab, from_scratch=args.from_scratch,
        backbone=args.backbone, ssm_state=args.ssm_state, ssm_expand=args.ssm_expand,
        val_split=None if args.val_split == "none" else args.val_split, validate_every=args.validate_every,
        balance=args.balance,
    )
    result = run_stage(args.stage, options)
    tail = result.losses[-100:]
    print(json.dumps({"stage": args.stage, "iterations": result.iterations, "model_dir": str(args.out),
                      "mean_loss_last_100": sum(tail) / len(tail) if tail else None, **result.metrics,
                      "validation": result.validation[-1] if result.validation else None}, indent=2))
    return 0


def _train_evaluator(args: argparse.Namespace) -> int:
    from safemotion.eval.train_evaluator import EvaluatorTraining, train_evaluator
    from safemotion.generate import pick_device

    defaults = EvaluatorTraining()
    milestones = defaults.milestones
    if args.milestones is not None:
        try:
            milestones = tuple(int(m) for m in args.milestones.split(",") if m.strip())
        except ValueError:
            raise ValueError(f"--milestones {args.milestones!r}: expected comma-separated iteration numbers") from None
    given = {"iters": args.iters, "batch_size": args.batch_size, "lr": args.lr, "warmup_iters": args.warmup_iters,
             "gamma": args.gamma, "eval_every": args.eval_every}
    training = EvaluatorTraining(**{**defaults.__dict__, **{k: v for k, v in given.items() if v is not None},
                                    "milestones": milestones, "seed": args.seed, "train_split": args.split,
                                    "max_minutes": args.minutes if args.minutes > 0 else None})
    record = train_evaluator(args.data, args.out, training, work=args.work, resume=args.resume,
                             device=pick_device(args.device), progress=not args.no_progress)
    print(json.dumps({"evaluator": str(args.out), "iterations": record["iterations"], "best": record["best"],
                      "test": record["test"]}, indent=2))
    return 0


def _eval_vq(args: argparse.Namespace) -> int:
    from safemotion.eval.reconstruction import reconstruction_error
    from safemotion.models.model_dir import load_model_dir

    report = reconstruction_error(load_model_dir(args.model), args.data, args.split, args.max_clips)
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def _eval_adherence(args: argparse.Namespace) -> int:
    from safemotion.eval.adherence import run_suite
    from safemotion.generate import DEFAULT_MODEL_DIR, Generator

    results = run_suite(Generator.from_dir(args.model or DEFAULT_MODEL_DIR), seeds=range(args.seeds))
    print(json.dumps([{"check": r.name, "prompts": r.prompts, "pass_rate": r.pass_rate, "passed": r.passed,
                       "measured": r.measured} for r in results], indent=2))
    return 0


def _eval_feet(args: argparse.Namespace) -> int:
    from safemotion.eval.foot_skating import feet_report
    from safemotion.generate import DEFAULT_MODEL_DIR, Generator

    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: use at least 1")
    report = feet_report(Generator.from_dir(args.model or DEFAULT_MODEL_DIR), args.data, seeds=range(args.seeds),
                         split=args.split, seconds=args.seconds)
    print(json.dumps(report, indent=2))
    return 0


def _eval_edits(args: argparse.Namespace) -> int:
    from safemotion.edit import Editor
    from safemotion.eval.edit_checks import run_edit_suite, seam_bounds
    from safemotion.generate import DEFAULT_MODEL_DIR
    from safemotion.safe_generation import SafeGenerator

    bounds = seam_bounds(args.data, args.split, args.limit_split)
    if args.bounds_only:
        print(json.dumps(bounds, indent=2))
        return 0
    suite = run_edit_suite(Editor(SafeGenerator.from_dir(args.model or DEFAULT_MODEL_DIR)), range(args.seeds),
                           bounds["bound"]["p95_velocity_jump_m"])
    print(json.dumps({
        **bounds,
        "seam_jump_m": {op: {"max": max(v), "median": float(sorted(v)[len(v) // 2]), "all": v}
                        for op, v in suite.seam_jumps.items()},
        "window_jump_m": {op: {"max": max(v), "all": v} for op, v in suite.window_jumps.items()},
        "checks": [{"check": r.name, "prompts": r.prompts, "pass_rate": r.pass_rate, "passed": r.passed,
                    "measured": r.measured} for r in suite.checks]}, indent=2))
    return 0


def _eval_flags(args: argparse.Namespace) -> int:
    from safemotion.atomic_dir import write_text_atomic
    from safemotion.eval.flag_rates import prompt_set_flags
    from safemotion.generate import Generator
    from safemotion.unlearn.prompt_sets import load_prompt_set
    from safemotion.unlearn.screening import load_screens

    generator = Generator.from_dir(args.model)
    screens = load_screens(args.model, generator.models.config)
    half = None if args.half == "all" else args.half
    sets = [prompt_set_flags(generator, generator.models, name, load_prompt_set(name, half), args.variations,
                             args.seconds, args.seed, screens) for name in args.sets]
    print(json.dumps({s.name: s.summary() for s in sets}, indent=2))
    if args.out:
        details = {"model": str(args.model), "variations": args.variations, "seconds": args.seconds,
                   "seed": args.seed, "half": args.half, "screened": screens is not None,
                   "sets": {s.name: s.to_dict() for s in sets}}
        write_text_atomic(args.out, json.dumps(details, indent=2, ensure_ascii=False) + "\n")
        print(f"per-prompt results: {args.out}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from safemotion.decoding import SamplingConfig
    from safemotion.eval.benchmark import (
        DEFAULT_EVALUATOR,
        BenchmarkSettings,
        add_rows,
        parse_model_specs,
        quick_settings,
        report_settings,
        require_report_sets,
        run_benchmark,
    )
    from safemotion.eval.report import REPORT_JSON, report_title, write_report

    if args.out is None and args.add_to is None:
        raise ValueError("give --out REPORT_DIR for a new report, or --add-to REPORT_DIR to add rows to one")
    specs = parse_model_specs(args.models, args.models_root)
    base = None
    if args.add_to is not None:
        report_file = args.add_to / REPORT_JSON
        if not report_file.is_file():
            raise FileNotFoundError(f"{report_file}: no benchmark report to add rows to; pass a folder written by "
                                    "`safemotion eval --out`")
        if args.quick:
            raise ValueError("--quick cannot add rows to a report: they would be scored on other samples")
        base = json.loads(report_file.read_text(encoding="utf-8"))
        settings = report_settings(base, args.repeats, args.device)
        require_report_sets(base, args.data, settings, str(args.add_to))
    else:
        settings = BenchmarkSettings(sets=tuple(s.strip() for s in args.sets.split(",") if s.strip()),
                                     repeats=20 if args.repeats is None else args.repeats, concept=args.concept,
                                     rule=args.rule,
                                     split=args.split, seed=args.seed, device=args.device,
                                     prompt_variations=args.prompt_variations,
                                     samples_per_repeat=args.samples_per_repeat,
                                     sampling=SamplingConfig(precision=args.precision))
    if args.quick:
        settings = quick_settings(settings)
    result = run_benchmark(specs, args.data, args.evaluator or DEFAULT_EVALUATOR, settings, args.clip_weights,
                           args.clip_vocab)
    if base is not None:
        try:
            result = add_rows(base, result, str(args.add_to))
        except ValueError as error:
            kept = write_report(result, args.add_to.with_name(args.add_to.name + "-unmerged"))
            raise ValueError(f"{error} (this run's own report, not merged: {kept})") from error
    out = write_report(result, args.out or args.add_to, title=None if base is None else report_title(args.add_to))
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from safemotion.serve.server import run_server

    return run_server(_server_settings(args))


def _server_settings(args: argparse.Namespace):
    from safemotion.serve.settings import ServerSettings

    options = {key: getattr(args, key) for key in (
        "host", "port", "model", "device", "max_batch", "batch_window_ms", "max_queue",
        "request_timeout", "forbid_allow", "threads", "precision", "log_level", "body_model", "max_queued_motions",
        "claim_lease", "max_attempts", "parent_pid", "engine", "replicas", "ray_address") if hasattr(args, key)}
    for flag, field in (("request_timeout", "request_timeout_s"), ("claim_lease", "claim_lease_s")):
        if flag in options:
            options[field] = options.pop(flag)
    return ServerSettings(db_url=args.db, data_dir=args.data_dir, **options)


def _keys(args: argparse.Namespace) -> int:
    from safemotion.serve.auth import create_key
    from safemotion.serve.store import Store

    store = Store(_server_settings(args).database_url())
    try:
        if args.keys_command == "add":
            key, record = create_key(store, args.name, args.role)
            print(f"created {record.role} key {record.name!r}; it is shown only once:\n{key}")
        elif args.keys_command == "revoke":
            if not store.revoke_key(args.name):
                raise ValueError(f"no active API key named {args.name!r} (see `safemotion keys list`)")
            # queued `allow` jobs would otherwise still produce unfiltered motions for a key that lost the right
            cancelled = store.cancel_jobs_of(args.name, "allow")
            print(f"revoked {args.name!r}" + (f"; cancelled its {len(cancelled)} queued 'allow' job(s)"
                                               if cancelled else ""))
        else:
            print(json.dumps([{"name": k.name, "role": k.role, "prefix": k.prefix, "created_at": k.created_at,
                               "revoked": k.revoked_at is not None} for k in store.list_keys()], indent=2))
    finally:
        store.close()
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
    build.add_argument("--motionx", type=Path, help="your Motion-X folder (motion_data/smplx_322, texts/semantic_labels)")
    build.add_argument("--smplx-model", type=Path, help="folder with your SMPL-X model SMPLX_NEUTRAL.npz (for --motionx)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--workers", type=int, default=2)
    build.add_argument("--include", nargs="*", help="only these sources (bandai, iclone, deepmimic, fbx, user, motionx)")
    build.add_argument("--strict", action="store_true",
                       help="fail (one line naming the file) on a --bvh-dir file that cannot be read; by default such "
                            "files are skipped with a one-line warning and listed under 'skipped' in stats.json. "
                            "Limits: BVH files up to 128 MB, 100000 frames, Frame Time up to 1 s")
    build.set_defaults(func=_data_build)

    split = data_commands.add_parser("split", help="write forget/retain id lists for a concept")
    split.add_argument("--data", type=Path, required=True, help="dataset folder")
    split.add_argument("--concept", default="violence")
    split.add_argument("--rule", choices=("paper", "word_boundary"), default="word_boundary")
    split.set_defaults(func=_data_split)

    momask = commands.add_parser("import-momask", help="convert official MoMask checkpoints to a model directory")
    momask.add_argument("--checkpoints", type=Path, required=True, help="official checkpoints folder (checkpoints/t2m)")
    momask.add_argument("--out", type=Path, required=True, help="model directory to create")
    momask.add_argument("--bamm", type=Path, help="official BAMM release folder (opt.txt, model/latest.tar): import "
                        "BAMM's base transformer with MoMask's RVQ-VAE, residual transformer and length estimator")
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
    generate.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                          help="for LCR models: sanitize (flag, keep the LCR motion), block (write nothing for flagged "
                               "motions) or allow (decode with the original codebook)")
    generate.add_argument("--no-foot-cleanup", action="store_true",
                          help="keep the decoder's feet as they are (default: pin planted feet with leg IK and put "
                               "the lowest contact on the floor)")
    _add_decoding_arguments(generate)
    generate.set_defaults(func=_generate)

    edit = commands.add_parser("edit", help="regenerate frame spans of a take, extend it, or make an in-between")
    edit.add_argument("source", nargs="?", type=Path, help="the take: .npz (from generate, or with joints [T, 22, "
                      "3]) or .bvh, at the model's frame rate (20 fps)")
    edit.add_argument("--frames", type=_frame_span, action="append", metavar="START:END",
                      help="frames to regenerate, end exclusive (repeat for several spans)")
    edit.add_argument("--extend", type=float, metavar="SECONDS", help="add this much new motion to the take")
    edit.add_argument("--at", choices=("end", "start"), default="end", help="with --extend: after or before the take")
    edit.add_argument("--between", type=Path, nargs=2, metavar=("A", "B"),
                      help="two takes: keep A, generate --seconds of transition, then B moved to continue from it")
    edit.add_argument("--seconds", type=float, help="with --between: length of the transition")
    edit.add_argument("--prompt", required=True, help="what the new part shows (1-300 characters)")
    edit.add_argument("--model", type=Path, help="model directory (default: the embedded safemotion-mini)")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--variations", type=int, default=1, help="edits to make, 1-16 (variation k uses seed + k)")
    edit.add_argument("--out", type=Path, required=True, help=".npz or .bvh; several variations get _1, _2, ... "
                      "suffixes")
    edit.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                      help="for LCR models, as for generate; kept frames are reviewed too")
    edit.add_argument("--margin", type=int, default=1, help="whole tokens regenerated around each span (0-8)")
    edit.add_argument("--blend", type=int, default=8, help="kept frames cross-faded at each seam (1-32)")
    edit.add_argument("--seam-limit", type=float, help="joint-velocity jump (m/frame²) over which a seam is "
                      "re-sampled, and still over which after the tries it is reported (default: "
                      "EditSettings.seam_limit, the training clips' 95th percentile that `safemotion eval-edits "
                      "--bounds-only` measures)")
    _add_decoding_arguments(edit)
    edit.set_defaults(func=_edit)

    train = commands.add_parser("train", help="train one stage (vq, mask, residual, length) into a model directory, "
                                "or a text-motion evaluator (evaluator) into an evaluator folder")
    train.add_argument("stage", choices=("vq", "mask", "residual", "length", "evaluator"))
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
    train.add_argument("--warmup-iters", type=int, help="linear warm-up (default: 2000, at most iters/10)")
    train.add_argument("--milestones", help="comma-separated iterations where lr is multiplied by --gamma")
    train.add_argument("--gamma", type=float)
    train.add_argument("--window-size", type=int, default=64, help="VQ training window in frames")
    train.add_argument("--seed", type=int, default=3407)
    train.add_argument("--device", default="auto")
    train.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    train.add_argument("--from-scratch", action="store_true",
                       help="mask/residual/length: start from fresh weights instead of the model directory's (e.g. "
                            "the retrain reference D_r on a copy of a model, keeping its VQ)")
    train.add_argument("--backbone", help="with mask --from-scratch: the new masked transformer's backbone "
                       "(transformer, mamba or serpent)")
    train.add_argument("--ssm-state", type=int, help="with mask --from-scratch: SSM state size of a mamba/serpent "
                       "backbone (default 16)")
    train.add_argument("--ssm-expand", type=int, help="with mask --from-scratch: SSM expansion of a mamba/serpent "
                       "backbone (default 2)")
    train.add_argument("--balance", type=float, default=0.0, metavar="POWER",
                       help="mask/residual/length: draw each clip with weight n^-POWER, n = clips sharing its content "
                            "label (the first label in index.csv); 0 draws uniformly (default), 0.5 lifts rare "
                            "actions such as bows")
    train.add_argument("--checkpoint-every", type=int, default=1000)
    train.add_argument("--val-split", default="val", help="split whose loss is tracked during training, or 'none'")
    train.add_argument("--validate-every", type=int, help="iterations between validations (default: --checkpoint-every)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--clip-weights", type=Path)
    train.add_argument("--clip-vocab", type=Path)
    train.add_argument("--minutes", type=float, default=20.0,
                       help="evaluator: time budget in minutes, 0 for none (resume with --resume)")
    train.add_argument("--eval-every", type=int,
                       help="evaluator: validate, keep the best weights and checkpoint every N iterations (250)")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="forget/retain unlearning benchmark of several models, with a report")
    evaluate.add_argument("--models", required=True,
                          help="comma-separated rows: name=MODEL_DIR, or names of folders in --models-root "
                          "(the paper's rows: original,retrain,finetune,uce,rece,lcr)")
    evaluate.add_argument("--models-root", type=Path, help="folder holding one model directory per row name")
    evaluate.add_argument("--data", type=Path, required=True, help="HumanML3D-layout dataset with kw_splits")
    evaluate.add_argument("--evaluator", type=Path, default=None,
                          help="evaluator folder (default: the bundled safemotion-eval-v1)")
    evaluate.add_argument("--sets", default="forget,retain", help="forget, retain or both")
    evaluate.add_argument("--repeats", type=int, help="repeats (default 20; with --add-to the report's, or fewer)")
    evaluate.add_argument("--concept", default="violence")
    evaluate.add_argument("--rule", choices=("paper", "word_boundary"), default="word_boundary",
                          help="split rule (kw_splits/<rule>) and MM-Safe masking rule; 'paper' reproduces the paper")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--prompt-variations", type=int, default=3,
                          help="generations per prompt for the flag rates (0 skips them)")
    evaluate.add_argument("--samples-per-repeat", type=int,
                          help="score at most N samples per repeat, a fresh random subset each repeat (default: all)")
    evaluate.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, ≤ 32 samples per set")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    evaluate.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    evaluate.add_argument("--clip-weights", type=Path, help="CLIP weights for models using the clip encoder")
    evaluate.add_argument("--clip-vocab", type=Path, help="CLIP BPE merges file")
    evaluate.add_argument("--out", type=Path, help="report folder, e.g. reports/NAME (default with --add-to: that one)")
    evaluate.add_argument("--add-to", type=Path,
                          help="add these rows to an existing report folder: its settings, samples and crops; the "
                               "protocol options (--sets, --concept, ...) are taken from it")
    evaluate.set_defaults(func=_eval)

    eval_vq = commands.add_parser("eval-vq", help="VQ reconstruction error (MPJPE, metres) on a dataset split")
    eval_vq.add_argument("--model", type=Path, required=True, help="model directory")
    eval_vq.add_argument("--data", type=Path, required=True, help="HumanML3D-layout dataset")
    eval_vq.add_argument("--split", default="test")
    eval_vq.add_argument("--max-clips", type=int, help="only the first N clips of the split")
    eval_vq.set_defaults(func=_eval_vq)

    adherence = commands.add_parser("eval-adherence", help="prompt adherence suite: physical checks over seeds")
    adherence.add_argument("--model", type=Path, help="model directory (default: the embedded safemotion-mini)")
    adherence.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per prompt")
    adherence.set_defaults(func=_eval_adherence)

    feet = commands.add_parser("eval-feet", help="foot skating, contact and ground penetration of generated walks and "
                                                 "runs (before and after the foot clean-up) and of real ones")
    feet.add_argument("--model", type=Path, help="model directory (default: the embedded safemotion-mini)")
    feet.add_argument("--data", type=Path, help="HumanML3D-layout dataset for the real clips (optional)")
    feet.add_argument("--split", default="test")
    feet.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 per prompt")
    feet.add_argument("--seconds", type=float, default=4.0, help="duration of the generated motions")
    feet.set_defaults(func=_eval_feet)

    edits = commands.add_parser("eval-edits", help="edit checks: jump inside a walk, sit after it, walk-to-wave "
                                "in-between, seams against real clips' velocity jumps")
    edits.add_argument("--model", type=Path, help="model directory (default: the embedded safemotion-mini)")
    edits.add_argument("--data", type=Path, required=True, help="HumanML3D-layout dataset whose real clips set the "
                       "seam bound (95th percentile of their joint-velocity jumps)")
    edits.add_argument("--split", default="test", help="split whose real clips set the seam bound (the check)")
    edits.add_argument("--limit-split", default="train", help="split whose real clips' 95th percentile is reported "
                       "beside EditSettings.seam_limit, the editor's re-sampling threshold it was set from")
    edits.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    edits.add_argument("--bounds-only", action="store_true", help="report the bound and the seam limit's measurement "
                       "only, without editing")
    edits.set_defaults(func=_eval_edits)

    flags = commands.add_parser("eval-flags", help="flag rates of an LCR model on the shipped prompt sets, per signal "
                                                   "and combined")
    flags.add_argument("--model", type=Path, required=True, help="LCR model directory")
    flags.add_argument("--variations", type=int, default=3, help="motions per prompt")
    flags.add_argument("--seconds", type=float, help="duration (default: the length estimator's)")
    flags.add_argument("--seed", type=int, default=0)
    flags.add_argument("--sets", nargs="+", choices=PROMPT_SETS, default=list(PROMPT_SETS), help="prompt sets to run")
    flags.add_argument("--half", choices=("test", "calibration", "all"), default="test",
                       help="which half of each set (thresholds are calibrated on the calibration half; default test)")
    flags.add_argument("--out", type=Path, help="also write each prompt's seeds, scores, signals and flags to this "
                       "JSON")
    flags.set_defaults(func=_eval_flags)

    add_unlearn_commands(commands)

    serve = commands.add_parser("serve", help="run the HTTP API server (FastAPI + uvicorn)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind; other than loopback, API keys must be configured (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--model", default="safemotion-mini-lcr",
                       help="model directory, or the name of one bundled in safemotion/assets/models")
    serve.add_argument("--device", default="auto", help="auto (cuda, mps, else cpu), cpu, cuda, cuda:1, mps")
    serve.add_argument("--db", help="SQLAlchemy database URL (default: SQLite in the data folder)")
    serve.add_argument("--data-dir", type=Path, help="data folder (default: $SAFEMOTION_DATA_DIR or the "
                       "platform's user data folder)")
    serve.add_argument("--max-batch", type=int, default=16, help="motions per model batch; 1 disables micro-batching")
    serve.add_argument("--batch-window-ms", type=float, default=10.0, help="wait for more requests to fill a batch")
    serve.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    serve.add_argument("--request-timeout", type=float, default=120.0, help="deadline of each request, seconds")
    serve.add_argument("--forbid-allow", action="store_true", help="refuse the 'allow' policy for everyone")
    serve.add_argument("--threads", type=int, help="torch threads of the model worker")
    serve.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    serve.add_argument("--body-model", type=Path, help="SMPL-format body model (.pkl/.npz) you own, served to the "
                       "Blender add-on to skin its SMPL armature (default: none)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--max-queued-motions", type=int, default=8192,
                       help="per API key: motions its queued jobs may hold (more: 429)")
    serve.add_argument("--claim-lease", type=float, default=30.0, help="seconds after which a job item claimed by a "
                       "server that stopped (crashed) is computed by another")
    serve.add_argument("--max-attempts", type=int, default=3, help="tries of one job item before it fails")
    serve.add_argument("--parent-pid", type=int, help="exit when this process ends (the add-on passes Blender's)")
    serve.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: the model in this process; ray: Ray Serve replicas (pip install "
                       "'safemotion[ray]'; jobs need a PostgreSQL --db shared by every replica)")
    serve.add_argument("--replicas", type=int, default=1, help="--engine ray: model replicas (one per GPU)")
    serve.add_argument("--ray-address", help="--engine ray: the Ray cluster to join (default: start Ray here)")
    serve.set_defaults(func=_serve)

    keys = commands.add_parser("keys", help="manage the server's API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_add = keys_commands.add_parser("add", help="create a key and print it (once)")
    keys_add.add_argument("--role", required=True, choices=("artist", "safety-admin"))
    keys_add.add_argument("--name", required=True, help="who holds the key (shown in the audit log)")
    keys_revoke = keys_commands.add_parser("revoke", help="revoke a key by name")
    keys_revoke.add_argument("name")
    keys_list = keys_commands.add_parser("list", help="list keys (names, roles, prefixes; never the keys)")
    for sub in (keys_add, keys_revoke, keys_list):
        sub.add_argument("--db", help="SQLAlchemy database URL (default: SQLite in the data folder)")
        sub.add_argument("--data-dir", type=Path, help="the server's data folder")
        sub.set_defaults(func=_keys)
    return parser


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--steps", type=int, default=10, help="masked decoding steps")
    parser.add_argument("--cond-scale", type=float, default=4.0, help="guidance scale of the base layer")
    parser.add_argument("--residual-cond-scale", type=float, default=5.0, help="guidance of the residual layers")
    parser.add_argument("--refine-cond-scale", type=float, default=3.0,
                        help="guidance of BAMM's second (refinement) pass; unused by MoMask models")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--gumbel", action="store_true", help="Gumbel-max instead of categorical sampling")
    parser.add_argument("--precision", default="fp32", help=PRECISION_HELP)
    parser.add_argument("--clip-weights", type=Path, help="CLIP ViT-B/32 weights (models using the clip encoder)")
    parser.add_argument("--clip-vocab", type=Path, help="CLIP BPE merges file")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `safemotion` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input or files: one line, no traceback
        print(f"safemotion: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safemotion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
