"""Side-by-side benchmark against the official momask-codes (issue 22), both in this one process.

The official code comes from a checkout the user supplies (`--peer DIR`, e.g. a clone of
github.com/EricGuo5513/momask-codes); nothing of it is stored in this repository. It needs `einops` (and `tqdm`) in
the environment; CLIP is never loaded: both sides get the same precomputed text features, so the peer's `clip`
import is satisfied by an empty module and its `encode_text` is replaced by the identity.

1. Seeded official-size weights (MoMask init, non-zero codebooks) are written in the release's checkpoint layout
   (checkpoints/t2m/<name>/{opt.txt, model/*.tar, meta/}) and converted with `safemotion import-momask`.
2. The official models are built and loaded as gen_t2m.py does (get_opt + the official classes, strict=False minus
   CLIP). Token identity in top-1 mode (temperature 1e-6, so categorical and Gumbel draws become the argmax): all code
   layers of a batch of mixed lengths and of one full-length motion, plus the largest difference of the guided logits.
3. Timing: text features → joints (base tokens, residual tokens, VQ decoding, un-normalisation, recover_from_ric),
   196 frames (49 tokens), 10 steps, CFG 4 / 5, top-k 0.9, temperature 1, `torch.set_num_threads(--threads)`.
   Each round runs every path once at batch 1 and once at batch 32, in an order that alternates between rounds, so
   drift in the machine's load falls on both. Per path: median, min and max wall time, CPU seconds of this process,
   the share of the CPUs other processes used meanwhile, and the ratio to the official code (of medians, and the
   median of the per-round ratios).
4. `--stages`: our fp32 path stage by stage at batch 1 and 32 (fastest of 3, wall and CPU seconds), the masked
   steps both as shipped and as the loop before the exact cuts (guided logits of every row), in the same process.

    .venv/bin/python bench/peer_momask.py --peer /path/to/momask-codes --write

On a machine shared with other jobs, OMP_WAIT_POLICY=PASSIVE keeps idle OpenMP threads from spinning (the CPU-second
column is then the least disturbed figure).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from safemotion.cli import main as safemotion_cli
from safemotion.decoding import SamplingConfig
from safemotion.generate import Generator
from safemotion.models import LengthEstimator
from safemotion.models.config import LengthEstimatorConfig, ModelConfig
from safemotion.models.model_dir import build_models, load_model_dir
from generate import timed
from results_md import machine, publish

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_momask_import import MASK_NAME, MASK_OPT, RES_NAME, RES_OPT, VQ_NAME, VQ_OPT, write_official_layout  # noqa: E402
from test_generate import full_logits_base_decoding  # noqa: E402

SECTION = "## Against the official MoMask code (issue 22)"
TOKENS = 49
BATCHES = (1, 32)
TOP1 = 1e-6  # temperature that turns both samplers into the argmax
SAMPLING = SamplingConfig(time_steps=10, cond_scale=4.0, residual_cond_scale=5.0, topk_filter_thres=0.9)


# ------------------------------------------------------------------------------------------------ the peer

@contextmanager
def _peer_path(peer: Path):
    """Import the peer's top-level packages (models, utils, common) from `peer` only while loading it."""
    sys.path.insert(0, str(peer))
    sys.modules.setdefault("clip", types.ModuleType("clip"))  # text features are passed in; CLIP is never called
    added = not hasattr(np, "float")
    if added:
        np.float = float  # common/quaternion.py uses the alias NumPy 1.24 removed
    try:
        yield
    finally:
        sys.path.remove(str(peer))
        if added:
            del np.float


class Official:
    """The official models from a momask-codes checkout, loaded from the official layout as gen_t2m.py does."""

    def __init__(self, peer: Path, checkpoints: Path):
        if not (peer / "models" / "mask_transformer" / "transformer.py").is_file():
            raise FileNotFoundError(f"{peer}: not a momask-codes checkout (models/mask_transformer/transformer.py "
                                    "missing); pass --peer with a clone of github.com/EricGuo5513/momask-codes")
        with _peer_path(peer):
            from models.mask_transformer.transformer import MaskTransformer, ResidualTransformer
            from models.vq.model import RVQVAE
            from utils.get_opt import get_opt
            from utils.motion_process import recover_from_ric
        self.recover_from_ric = recover_from_ric
        for cls in (MaskTransformer, ResidualTransformer):
            cls.load_and_freeze_clip = lambda self, version: None
        t2m = checkpoints / "t2m"

        def opt(name: str):
            o = get_opt(str(t2m / name / "opt.txt"), device=torch.device("cpu"))
            o.checkpoints_dir = str(checkpoints)
            return o

        def load(name: str, file: str, keys: tuple[str, ...]) -> dict:
            ckpt = torch.load(t2m / name / "model" / file, map_location="cpu", weights_only=True)
            return ckpt[next(k for k in keys if k in ckpt)]

        vq_opt, mask_opt, res_opt = opt(VQ_NAME), opt(MASK_NAME), opt(RES_NAME)
        self.vq = RVQVAE(vq_opt, vq_opt.dim_pose, vq_opt.nb_code, vq_opt.code_dim, vq_opt.output_emb_width,
                         vq_opt.down_t, vq_opt.stride_t, vq_opt.width, vq_opt.depth, vq_opt.dilation_growth_rate,
                         vq_opt.vq_act, vq_opt.vq_norm)
        self.vq.load_state_dict(load(VQ_NAME, "net_best_fid.tar", ("vq_model", "net")))
        for o in (mask_opt, res_opt):
            o.num_tokens, o.num_quantizers, o.code_dim = vq_opt.nb_code, vq_opt.num_quantizers, vq_opt.code_dim
        self.mask = MaskTransformer(code_dim=mask_opt.code_dim, cond_mode="text", latent_dim=mask_opt.latent_dim,
                                    ff_size=mask_opt.ff_size, num_layers=mask_opt.n_layers, num_heads=mask_opt.n_heads,
                                    dropout=mask_opt.dropout, clip_dim=512, cond_drop_prob=mask_opt.cond_drop_prob,
                                    clip_version="ViT-B/32", opt=mask_opt)
        self.res = ResidualTransformer(code_dim=vq_opt.code_dim, cond_mode="text", latent_dim=res_opt.latent_dim,
                                       ff_size=res_opt.ff_size, num_layers=res_opt.n_layers,
                                       num_heads=res_opt.n_heads, dropout=res_opt.dropout, clip_dim=512,
                                       shared_codebook=vq_opt.shared_codebook, cond_drop_prob=res_opt.cond_drop_prob,
                                       share_weight=res_opt.share_weight, clip_version="ViT-B/32", opt=res_opt)
        for model, state in ((self.mask, load(MASK_NAME, "latest.tar", ("t2m_transformer", "trans"))),
                             (self.res, load(RES_NAME, "net_best_fid.tar", ("res_transformer",)))):
            missing, unexpected = model.load_state_dict(state, strict=False)
            assert not unexpected and all(k.startswith("clip_model.") for k in missing), (missing, unexpected)
            model.encode_text = lambda features: features
        for model in (self.vq, self.mask, self.res):
            model.eval()
        meta = t2m / VQ_NAME / "meta"
        self.mean, self.std = np.load(meta / "mean.npy"), np.load(meta / "std.npy")

    @torch.no_grad()
    def tokens(self, features: torch.Tensor, lengths: torch.Tensor, temperature: float) -> torch.Tensor:
        """(B, max(lengths), 6) code ids, −1 at padding, as gen_t2m.py draws them."""
        ids = self.mask.generate(features, lengths, timesteps=SAMPLING.time_steps, cond_scale=SAMPLING.cond_scale,
                                 temperature=temperature, topk_filter_thres=SAMPLING.topk_filter_thres,
                                 gsample=False)
        return self.res.generate(ids, features, lengths, temperature=temperature,
                                 topk_filter_thres=SAMPLING.topk_filter_thres,
                                 cond_scale=SAMPLING.residual_cond_scale)

    @torch.no_grad()
    def motions(self, features: torch.Tensor, lengths: torch.Tensor) -> list[np.ndarray]:
        """Joints (4n, 22, 3) per motion: tokens, forward_decoder, inv_transform, recover_from_ric (gen_t2m.py)."""
        decoded = self.vq.forward_decoder(self.tokens(features, lengths, 1.0)).cpu().numpy() * self.std + self.mean
        return [self.recover_from_ric(torch.from_numpy(d[:4 * int(n)]).float(), 22).numpy()
                for d, n in zip(decoded, lengths)]


# ------------------------------------------------------------------------------------------------ the models

def write_checkpoints(root: Path, seed: int) -> Path:
    """Seeded official-size weights in the release layout (MoMask init, N(0, 1) codebooks, random statistics)."""
    torch.manual_seed(seed)
    models = build_models(ModelConfig())
    for layer in models.vq.quantizer.layers:
        layer.codebook.normal_()
    states = {"vq": models.vq.state_dict(), "mask": models.mask_transformer.state_dict(),
              "res": models.residual_transformer.state_dict(),
              "length": LengthEstimator(LengthEstimatorConfig()).state_dict()}
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=263).astype(np.float32)
    std = rng.uniform(0.1, 2.0, size=263).astype(np.float32)
    return write_official_layout(root, states, VQ_OPT, MASK_OPT, RES_OPT, mean, std)


def ours(model_dir: Path, precision: str = "fp32", temperature: float = 1.0) -> Generator:
    """A SafeMotion Generator on the converted model directory."""
    sampling = dataclasses.replace(SAMPLING, precision=precision, temperature=temperature)
    return Generator(load_model_dir(model_dir), None, sampling, "cpu", batch_size=max(BATCHES))


def check_identity(official: Official, model_dir: Path, features: torch.Tensor) -> dict:
    """Top-1 tokens of both implementations (all layers) for a mixed-length batch and one full-length motion."""
    generator = ours(model_dir, temperature=TOP1)
    lengths = torch.randint(2, TOKENS + 1, (features.shape[0],), generator=torch.Generator().manual_seed(7))
    lengths[0] = TOKENS
    cases = {"batch of 32, lengths 2-49": (features, lengths), "batch of 1, 49 tokens": (features[:1], lengths[:1])}
    result = {}
    for name, (feats, lens) in cases.items():
        theirs = official.tokens(feats, lens, TOP1)
        mine = generator.generate_from_features(feats, list(range(len(lens))), lens.tolist(), smpl=False)
        equal = sum(int(np.array_equal(m.tokens, theirs[i, :int(n)].numpy())) for i, (m, n) in enumerate(
            zip(mine, lens)))
        tokens_equal = sum(int((m.tokens == theirs[i, :int(n)].numpy()).sum()) for i, (m, n) in enumerate(
            zip(mine, lens)))
        result[name] = (equal, len(lens), tokens_equal, int(6 * lens.sum()))
    ids = torch.randint(0, 512, (features.shape[0], TOKENS), generator=torch.Generator().manual_seed(8))
    pad = torch.zeros_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        a = official.mask.forward_with_cond_scale(ids, features, pad, cond_scale=SAMPLING.cond_scale)
        b = generator.models.mask_transformer.forward_with_cond_scale(ids, features, pad, SAMPLING.cond_scale)
    result["guided logits, largest |difference|"] = float((a - b).abs().max())
    return result


# ------------------------------------------------------------------------------------------------ timing

def _load() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def interleaved(paths: dict[str, dict[int, callable]], rounds: int) -> dict:
    """Every path at every batch size once per round; the order of the paths reverses every other round."""
    names = list(paths)
    runs = {(name, b): [] for name in names for b in BATCHES}
    for r in range(rounds):
        for b in BATCHES:
            for name in (names if r % 2 == 0 else names[::-1]):
                fn = paths[name][b]
                cpu0 = time.process_time()
                wall, others = timed(fn)
                runs[name, b].append({"wall": wall, "cpu": time.process_time() - cpu0, "others": others,
                                      "load": _load()})
                print(f"round {r} batch {b} {name}: {wall:.3f} s (others {others:.0%}, load {_load()})", flush=True)
    return runs


def summary(runs: dict, baseline: str) -> list[str]:
    """Markdown rows: one per path and batch size."""
    rows = []
    for (name, b), values in runs.items():
        walls = [v["wall"] for v in values]
        base = [v["wall"] for v in runs[baseline, b]]
        median = statistics.median(walls)
        paired = statistics.median(o / w for o, w in zip(base, walls))
        rows.append(
            f"| {name} | {b} | {median:.3f} | {min(walls):.3f} / {max(walls):.3f} | {b / median:.2f} | "
            f"{statistics.median(v['cpu'] for v in values):.2f} | "
            f"{statistics.median(v['others'] for v in values):.0%} | {statistics.median(base) / median:.2f}× | "
            f"{paired:.2f}× |")
    return rows


def stages(generator: Generator, features: torch.Tensor, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Fastest-of-`repeats` wall and CPU seconds per stage of our fp32 path at one batch size (49 tokens)."""
    from safemotion.decoding import decode_base, decode_residual
    from safemotion.motion.features import recover_from_ric
    from safemotion.motion.smpl import joints_to_smpl

    models, cfg = generator.models, generator.sampling
    feats, lengths = features[:batch], torch.full((batch,), TOKENS)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(batch)]  # noqa: E731
    base = decode_base(models.mask_transformer, feats, lengths, gens(), cfg)
    ids = decode_residual(models.residual_transformer, base, feats, lengths, gens(), cfg)
    tokens = [row.numpy() for row in ids]
    decoded = generator.decode_tokens(tokens)
    joints = [recover_from_ric(d) for d in decoded]
    parts = {
        "masked steps (base layer)": lambda: decode_base(models.mask_transformer, feats, lengths, gens(), cfg),
        "masked steps, every row's logits (before the exact cuts)": lambda: full_logits_base_decoding(
            models.mask_transformer, feats, lengths, gens(), cfg),
        "residual layers": lambda: decode_residual(models.residual_transformer, base, feats, lengths, gens(), cfg),
        "VQ decoder + un-normalise": lambda: generator.decode_tokens(tokens),
        "joint recovery": lambda: [recover_from_ric(d) for d in decoded],
        "SMPL fit": lambda: [joints_to_smpl(j, fps=generator.fps) for j in joints],
    }
    return {name: _fastest(fn, repeats) for name, fn in parts.items()}


def _fastest(fn, repeats: int) -> tuple[float, float]:
    """(fastest wall, fastest CPU seconds of this process) of `repeats` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu0 = time.process_time()
        walls.append(timed(fn)[0])
        cpus.append(time.process_time() - cpu0)
    return min(walls), min(cpus)


def report(identity: dict, runs: dict, stage_times: dict, before: str, after: str, args) -> str:
    """The markdown section."""
    lines = [
        SECTION, "",
        f"`bench/peer_momask.py --peer DIR --rounds {args.rounds}`: the official momask-codes (commit of the "
        "checkout given) and SafeMotion in one process, same seeded official-size weights (written in the release "
        "layout, converted with `safemotion import-momask`), same text features, 196 frames, 10 steps, CFG 4 / 5, "
        f"top-k 0.9, temperature 1, `torch.set_num_threads({args.threads})`; text features → joints. "
        "Rounds interleave the paths (order reversed every other round).", "",
        f"- Machine at start: {before}", f"- Machine at end: {after}", "",
        "Token identity in top-1 mode (temperature 1e-6), all 6 code layers:", "",
    ]
    for name, value in identity.items():
        if isinstance(value, tuple):
            lines.append(f"- {name}: {value[0]} / {value[1]} motions identical ({value[2]} / {value[3]} ids)")
        else:
            lines.append(f"- {name}: {value:.2e}")
    lines += ["", "| path | batch | median s | min / max s | motions/s | CPU s (process) | others' CPU share | "
              "speed vs official (medians) | median of per-round ratios |", "|---|---|---|---|---|---|---|---|---|"]
    lines += summary(runs, "official")
    lines += ["", "Loads (1/5/15 min) at each run: " + "; ".join(
        f"{name} b{b} r{i}: {v['load']}" for (name, b), values in runs.items() for i, v in enumerate(values)), ""]
    if stage_times:
        lines += ["Where SafeMotion's fp32 time goes (fastest of 3 wall / fastest of 3 CPU seconds of this process "
                  "per call; SMPL fit = all motions of the batch, not part of the timed path above; text encoding "
                  "is not timed here, both sides get features):", "",
                  "| stage | " + " | ".join(f"batch {b}: wall / CPU s" for b in stage_times) + " |",
                  "|---|" + "---|" * len(stage_times)]
        for stage in next(iter(stage_times.values())):
            lines.append(f"| {stage} | " + " | ".join(f"{t[stage][0]:.3f} / {t[stage][1]:.3f}"
                                                      for t in stage_times.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, required=True, help="momask-codes checkout (never part of this repo)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32"], help="SafeMotion precisions to time")
    parser.add_argument("--stages", action="store_true", help="also time our fp32 stages at batch 1 and 32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write the section into bench/RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="peer_momask_") as tmp:
        checkpoints = write_checkpoints(Path(tmp), args.seed)
        model_dir = Path(tmp) / "converted"
        if safemotion_cli(["import-momask", "--checkpoints", str(checkpoints), "--out", str(model_dir)]) != 0:
            raise SystemExit("safemotion import-momask failed")
        official = Official(args.peer.resolve(), checkpoints)
        features = torch.randn(max(BATCHES), 512, generator=torch.Generator().manual_seed(args.seed + 1))
        identity = check_identity(official, model_dir, features)
        print(identity, flush=True)
        lengths = {b: torch.full((b,), TOKENS) for b in BATCHES}
        seeds = iter(range(1, 10**9))
        paths = {"official": {b: (lambda b=b: official.motions(features[:b], lengths[b])) for b in BATCHES}}
        generators = {p: ours(model_dir, p) for p in args.precisions}
        for precision, generator in generators.items():
            paths[f"SafeMotion {precision}"] = {b: (lambda b=b, g=generator: g.generate_from_features(
                features[:b], [next(seeds) for _ in range(b)], [TOKENS] * b, smpl=False)) for b in BATCHES}
        for fns in paths.values():  # warm-up
            fns[1]()
        runs = interleaved(paths, args.rounds)
        stage_times = ({b: stages(generators.get("fp32") or ours(model_dir), features, b, 3) for b in BATCHES}
                       if args.stages else {})
    text = report(identity, runs, stage_times, before, machine(), args)
    publish(SECTION, text, write=args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
