"""The `safemotion unlearn {lcr,uce,rece,finetune,screens,calibrate}` and `safemotion audit` sub-commands (registered by
safemotion.cli); each handler is a thin wrapper over a library function and prints JSON (audit: text or JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safemotion.data.concepts import DEFAULT_RULE, RULES


def _lcr(args: argparse.Namespace) -> int:
    from safemotion.unlearn.lcr_pipeline import USE_DEFAULT_CACHE, LCROptions, run_lcr

    cache_dir = None if args.no_cache else (args.cache_dir or USE_DEFAULT_CACHE)
    result = run_lcr(LCROptions(
        model=args.model, data=args.data, out=args.out, concept=args.concept, rule=args.rule, k=args.k,
        alpha=args.alpha, layers=tuple(args.layers), orthogonal=args.orth, source_code=args.source_code,
        seed=args.seed, repeats=args.repeats, split=args.split, count_padding=not args.exclude_padding,
        cache_dir=cache_dir, batch_size=args.batch_size, precision=args.precision, device=args.device,
        overwrite=args.overwrite, progress=not args.no_progress,
    ))
    print(json.dumps({
        "model_dir": str(result.out), "removed_codes": {str(k): v for k, v in result.removed_codes.items()},
        "samples": {"forget": result.n_forget, "retain": result.n_retain},
        "cache_file": None if result.cache_file is None else str(result.cache_file), "cache_hit": result.cache_hit,
        "seconds": result.timings,
    }, indent=2))
    return 0


def _cond_edit(args: argparse.Namespace) -> int:
    from safemotion.unlearn.cond_edit import RETAIN_WORDS, CondEditOptions, CondEditSettings, run_cond_edit

    settings = CondEditSettings(lam=args.lam, eta=args.eta, rho=args.rho, bias_quirk=args.bias_quirk,
                                **({"gamma": args.gamma, "epochs": args.epochs} if args.method == "rece" else {}))
    out = run_cond_edit(CondEditOptions(
        model=args.model, out=args.out, method=args.method, concept=args.concept,
        forget=tuple(args.forget_words) if args.forget_words else None,
        retain=tuple(args.retain_words) if args.retain_words else RETAIN_WORDS,
        target=args.target_text, settings=settings, device=args.device, overwrite=args.overwrite,
        clip_weights=args.clip_weights, clip_vocab=args.clip_vocab,
    ))
    print(json.dumps({"model_dir": str(out), "method": args.method}, indent=2))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from safemotion.unlearn.finetune import FinetuneOptions, run_finetune

    out = run_finetune(FinetuneOptions(
        model=args.model, data=args.data, out=args.out, concept=args.concept, rule=args.rule, split=args.split,
        residual=args.residual, iters=args.iters, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        device=args.device, work=args.work, resume=args.resume, checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress, overwrite=args.overwrite, clip_weights=args.clip_weights,
        clip_vocab=args.clip_vocab,
    ))
    print(json.dumps({"model_dir": str(out), "method": "finetune"}, indent=2))
    return 0


def _screens(args: argparse.Namespace) -> int:
    from safemotion.unlearn.screen_training import ScreenOptions, run_screen_training

    report = run_screen_training(ScreenOptions(
        model=args.model, data=args.data, take_labels=tuple(args.take_labels or ()), folds=args.folds, seed=args.seed,
        clip_weights=args.clip_weights, clip_vocab=args.clip_vocab))
    print(json.dumps(report, indent=2))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    if args.signals:
        return _calibrate_signals(args)
    if args.data is None:
        raise ValueError("calibrate needs --data DATASET (only --signals calibrates on the shipped prompt sets)")
    from safemotion.decoding import SamplingConfig
    from safemotion.unlearn.calibration import CalibrationOptions, run_audit_calibration, run_calibration

    sampling = SamplingConfig(time_steps=args.steps, cond_scale=args.cond_scale)
    sampling.validate()
    calibrate = run_audit_calibration if args.audit else run_calibration
    calibration = calibrate(CalibrationOptions(
        model=args.model, data=args.data, split=args.split, max_captions=args.max_captions, samples=args.samples,
        seed=args.seed, sampling=sampling, device=args.device, batch_size=args.batch_size, max_fpr=args.max_fpr,
        write=not args.dry_run,
        clip_weights=args.clip_weights, clip_vocab=args.clip_vocab,
    ))
    print(json.dumps({"model_dir": str(args.model), "threshold_of": "audit" if args.audit else "generation",
                      "written": not args.dry_run, **calibration.to_dict()}, indent=2))
    return 0


def _calibrate_signals(args: argparse.Namespace) -> int:
    from safemotion.unlearn.signal_calibration import DEFAULT_MAX_FPR, SignalCalibrationOptions, run_signal_calibration

    fitted = run_signal_calibration(SignalCalibrationOptions(
        model=args.model, variations=args.variations, seconds=args.seconds, seed=args.seed,
        max_fpr=DEFAULT_MAX_FPR if args.max_fpr is None else args.max_fpr, write=not args.dry_run,
        device="cpu" if args.device == "auto" else args.device))
    print(json.dumps({"model_dir": str(args.model), "threshold_of": "signals", "written": not args.dry_run, **fitted},
                     indent=2))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from safemotion.unlearn.audit import DEFAULT_AUDIT_MODEL_DIR, audit_file

    report = audit_file(args.file, args.model or DEFAULT_AUDIT_MODEL_DIR, device=args.device)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0


def add_unlearn_commands(commands: argparse._SubParsersAction) -> None:
    """Register `unlearn` (with its methods) and `audit` on the top-level sub-command set."""
    unlearn = commands.add_parser("unlearn", help="remove a concept from a model (LCR and baselines)")
    methods = unlearn.add_subparsers(dest="unlearn_command", required=True)

    lcr = methods.add_parser("lcr", help="Latent Code Replacement: edit the RVQ codebook (hmu paper defaults)")
    _model_data_out(lcr)
    _concept(lcr)
    lcr.add_argument("--k", type=int, default=16, help="top-k codes per selection score (union of two rankings)")
    lcr.add_argument("--alpha", type=float, default=1.0, help="noise scale in codebook standard deviations")
    lcr.add_argument("--layers", type=int, nargs="+", default=[0], help="RVQ layers to edit (default: base layer 0)")
    lcr.add_argument("--orth", action="store_true", help="orthogonal-projection variant instead of replacement")
    lcr.add_argument("--source-code", type=int, default=0, help="code whose vector replaces the removed ones")
    lcr.add_argument("--seed", type=int, default=0, help="seed of the crops and the replacement noise")
    lcr.add_argument("--repeats", type=int, default=20, help="random crops per caption line")
    lcr.add_argument("--split", default="train_val", help="split whose motions give the code statistics")
    lcr.add_argument("--exclude-padding", action="store_true",
                     help="count only codes inside each crop (upstream also counts the zero-padded tail)")
    lcr.add_argument("--cache-dir", type=Path, help="code-statistics cache (default: <data>/.cache/lcr)")
    lcr.add_argument("--no-cache", action="store_true", help="neither read nor write cached code statistics")
    lcr.add_argument("--batch-size", type=int, default=256, help="crops encoded per batch")
    lcr.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="VQ encoder precision for the statistics: bf16 is about 2.7x faster on CPUs with AVX512-BF16 "
                     "or AMX and on GPUs, but a few crops may get other codes (default fp32, as upstream)")
    _common(lcr, progress=True)
    lcr.set_defaults(func=_lcr)

    for method, text in (("uce", "UCE: closed-form edit of both transformers' text projection"),
                         ("rece", "RECE: UCE followed by adversarial closed-form rounds")):
        parser = methods.add_parser(method, help=text)
        parser.add_argument("--model", type=Path, required=True, help="model directory to unlearn")
        parser.add_argument("--out", type=Path, required=True, help="model directory to write")
        parser.add_argument("--concept", default="violence", help="concept whose paper keywords are forgotten")
        parser.add_argument("--forget-words", nargs="+", help="words to forget (default: the concept's keywords)")
        parser.add_argument("--retain-words", nargs="+", default=None, help="words to preserve (default: the "
                            "released 21 words walk ... moves)")
        parser.add_argument("--target-text", default="", help="prompt the forget words are mapped to")
        parser.add_argument("--lam", type=float, default=0.1, help="λ: weight of the original W")
        parser.add_argument("--eta", type=float, default=0.1, help="η: erase scale")
        parser.add_argument("--rho", type=float, default=0.5, help="ρ: preserve scale")
        if method == "rece":
            parser.add_argument("--gamma", type=float, default=1e-3, help="γ: regulariser of the adversarial solve")
            parser.add_argument("--epochs", type=int, default=1, help="adversarial rounds")
        parser.add_argument("--bias-quirk", action="store_true",
                            help="reproduce the released code: biased targets fitted by W alone (outputs gain b)")
        _common(parser, progress=False)
        parser.add_argument("--clip-weights", type=Path, help="CLIP weights (models using the clip encoder)")
        parser.add_argument("--clip-vocab", type=Path, help="CLIP BPE merges file")
        parser.set_defaults(func=_cond_edit, method=method)

    finetune = methods.add_parser("finetune", help="continue training the masked transformer on retain clips")
    _model_data_out(finetune)
    _concept(finetune)
    finetune.add_argument("--split", default="train", help="split whose retain clips are trained on")
    finetune.add_argument("--residual", action="store_true", help="also fine-tune the residual transformer")
    finetune.add_argument("--iters", type=int, help="iterations per stage (default: the stage's full schedule)")
    finetune.add_argument("--batch-size", type=int)
    finetune.add_argument("--lr", type=float, default=2e-5)
    finetune.add_argument("--seed", type=int, default=3407)
    finetune.add_argument("--work", type=Path, help="training folder (default: <out>.training)")
    finetune.add_argument("--resume", action="store_true", help="continue from the work folder's checkpoints")
    finetune.add_argument("--checkpoint-every", type=int, default=1000)
    finetune.add_argument("--clip-weights", type=Path)
    finetune.add_argument("--clip-vocab", type=Path)
    _common(finetune, progress=True)
    finetune.set_defaults(func=_finetune)

    screens = methods.add_parser("screens", help="train an LCR model's prompt screen and motion judge on a dataset")
    screens.add_argument("--model", type=Path, required=True, help="LCR model directory (screens written into it)")
    screens.add_argument("--data", type=Path, required=True, help="dataset with the concept's split files")
    screens.add_argument("--take-labels", type=Path, nargs="+",
                         help="labels.tsv files (columns clip, violent_content) whose takes override the caption "
                              "rule, e.g. shared/data/ase_sword_shield/labels.tsv")
    screens.add_argument("--folds", type=int, default=5, help="folds of takes for the judge's held-out report")
    screens.add_argument("--seed", type=int, default=0)
    screens.add_argument("--clip-weights", type=Path)
    screens.add_argument("--clip-vocab", type=Path)
    screens.set_defaults(func=_screens)

    calibrate = methods.add_parser("calibrate", help="measure an LCR model's flagging thresholds")
    calibrate.add_argument("--model", type=Path, required=True, help="LCR model directory (updated in place)")
    calibrate.add_argument("--data", type=Path, help="dataset with the concept's split files (not with --signals)")
    calibrate.add_argument("--signals", action="store_true",
                           help="calibrate the prompt and motion thresholds and the combiner on the calibration halves "
                                "of the shipped prompt sets (--max-fpr defaults to 0.01 of safe motions)")
    calibrate.add_argument("--variations", type=int, default=3, help="--signals: motions per prompt")
    calibrate.add_argument("--seconds", type=float, help="--signals: duration (default: the length estimator's)")
    calibrate.add_argument("--split", default="val")
    calibrate.add_argument("--max-captions", type=int, default=500, help="captions per side (random subset)")
    calibrate.add_argument("--samples", type=int, default=1, help="generations per caption (scores averaged)")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--steps", type=int, default=10, help="masked decoding steps")
    calibrate.add_argument("--cond-scale", type=float, default=4.0)
    calibrate.add_argument("--batch-size", type=int, default=64)
    calibrate.add_argument("--max-fpr", type=float,
                           help="pick the lowest threshold whose false-positive rate on the retain captions is at most "
                                "this (e.g. 0.01) instead of maximising Youden's J")
    calibrate.add_argument("--audit", action="store_true",
                           help="calibrate the threshold of `safemotion audit` instead, on the split's real clips "
                                "(violent vs safe, encoded with the original codebooks)")
    calibrate.add_argument("--dry-run", action="store_true", help="print the calibration, leave config.json as is")
    calibrate.add_argument("--device", default="auto")
    calibrate.add_argument("--clip-weights", type=Path)
    calibrate.add_argument("--clip-vocab", type=Path)
    calibrate.set_defaults(func=_calibrate)

    audit = commands.add_parser("audit", help="find where a motion file uses codes an LCR model removed")
    audit.add_argument("file", type=Path, help=".bvh, .fbx or .npz (joints [T, 22, 3]) motion")
    audit.add_argument("--model", type=Path, help="LCR model directory (default: the embedded safemotion-mini-lcr)")
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument("--device", default="cpu")
    audit.set_defaults(func=_audit)


def _model_data_out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model directory to unlearn")
    parser.add_argument("--data", type=Path, required=True, help="HumanML3D-layout dataset with kw_splits")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")


def _concept(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concept", default="violence")
    parser.add_argument("--rule", choices=RULES, default=DEFAULT_RULE, help="which split files (kw_splits/<rule>)")


def _common(parser: argparse.ArgumentParser, progress: bool) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
