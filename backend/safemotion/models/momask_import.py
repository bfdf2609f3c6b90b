"""Convert an official MoMask checkpoint folder into a SafeMotion model directory (momask_architecture.md §7–§8).

Official layout, per dataset folder (`checkpoints/t2m`):

    <vq_name>/opt.txt, <vq_name>/model/net_best_fid.tar ['vq_model' or 'net'], <vq_name>/meta/{mean,std}.npy
    <mask_name>/opt.txt, <mask_name>/model/latest.tar ['t2m_transformer' or 'trans']
    <res_name>/opt.txt, <res_name>/model/net_best_fid.tar ['res_transformer']
    length_estimator/model/finest.tar ['estimator']

The mask transformer's opt.txt names the VQ folder (`vq_name`). Containers are read with
torch.load(weights_only=True); nothing is written until everything has loaded and verified.

BAMM (bamm_architecture.md §8): its release folder `<name>/opt.txt, <name>/model/latest.tar ['t2m_transformer' or
'trans']` replaces the mask transformer; the RVQ-VAE, residual transformer and length estimator are MoMask's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from safemotion.models.config import (
    LengthEstimatorConfig,
    ModelConfig,
    TransformerConfig,
    VQConfig,
)
from safemotion.models.model_dir import (
    build_empty_models,
    check_state_dict,
    model_card,
    save_model_dir,
)
from safemotion.npy_arrays import read_numeric_npy

RELEASED_NAMES = {  # (mask transformer, residual transformer) folders of the public releases
    "t2m": ("t2m_nlayer8_nhead6_ld384_ff1024_cdp0.1_rvq6ns", "tres_nlayer8_ld384_ff1024_rvq6ns_cdp0.2_sw"),
    "kit": ("t2m_nlayer8_nhead6_ld384_ff1024_cdp0.1_rvq6ns_k", "tres_nlayer8_ld384_ff1024_rvq6ns_cdp0.2_sw_k"),
}
DATASETS = {"t2m": {"dim_pose": 263, "fps": 20.0}, "kit": {"dim_pose": 251, "fps": 12.5}}
CLIP_DIM = 512
# component → (container files in order of preference, state-dict keys in order of preference)
CONTAINERS = {
    "vq": (("net_best_fid.tar", "latest.tar"), ("vq_model", "net")),
    "mask_transformer": (("latest.tar", "net_best_fid.tar"), ("t2m_transformer", "trans")),
    "residual_transformer": (("net_best_fid.tar", "latest.tar"), ("res_transformer",)),
    "length_estimator": (("finest.tar",), ("estimator",)),
}
BAMM_CARD_NOTE = """

BAMM decoding (bamm_architecture.md §6): pass 1 samples the 49 token slots causally (guidance `cond_scale`) and,
without a requested length, ends the motion at its first [END] token (the length estimator is not used then); pass 2
keeps the first tokens and END as bidirectional context and re-samples the last round(L/2) tokens (guidance
`refine_cond_scale`, 3 in the release). The release picks those tokens by the tie order of `argsort` over equal scores
(platform-dependent, mostly the second half on CPU); SafeMotion always re-samples the last round(L/2) positions before
the length, a documented deterministic rule, so token-level results can differ from the official code's."""
OPT_BANNERS = ("------------ Options -------------", "-------------- End ----------------")


class Options:
    """The `key: value` lines of an official opt.txt, with typed access that names the file on error."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, str] = {}
        if not path.is_file():
            raise FileNotFoundError(f"{path}: opt.txt not found; is this an official MoMask checkpoint folder?")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip() or line.strip() in OPT_BANNERS:
                continue
            key, sep, value = line.partition(": ")
            if not sep or not key:
                raise ValueError(f"{path}:{number}: expected 'key: value', found {line!r}")
            self.values[key] = value

    def _raw(self, key: str, default: str | None = None) -> str:
        if key in self.values:
            return self.values[key]
        if default is not None:
            return default
        raise ValueError(f"{self.path}: option '{key}' is missing")

    def get_str(self, key: str, default: str | None = None) -> str:
        """String value."""
        return self._raw(key, default)

    def get_int(self, key: str, default: int | None = None) -> int:
        """Integer value."""
        raw = self._raw(key, None if default is None else str(default))
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{self.path}: option '{key}' must be an integer, found {raw!r}") from None

    def get_float(self, key: str, default: float | None = None) -> float:
        """Floating-point value."""
        raw = self._raw(key, None if default is None else repr(default))
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{self.path}: option '{key}' must be a number, found {raw!r}") from None

    def get_bool(self, key: str, default: bool | None = None) -> bool:
        """'True' / 'False' value."""
        raw = self._raw(key, None if default is None else str(default))
        if raw not in ("True", "False"):
            raise ValueError(f"{self.path}: option '{key}' must be True or False, found {raw!r}")
        return raw == "True"


def import_momask(checkpoints: Path, out: Path, dataset: str = "t2m", mask_name: str | None = None,
                  res_name: str | None = None, overwrite: bool = False, bamm: Path | None = None) -> Path:
    """Convert official MoMask checkpoints (RVQ, both transformers, length estimator) into model directory `out`;
    with `bamm` (the BAMM release folder holding opt.txt and model/latest.tar) BAMM's base transformer replaces
    MoMask's masked transformer."""
    checkpoints, out = Path(checkpoints), Path(out)
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another path or remove it first")
    root = checkpoints / dataset if (checkpoints / dataset).is_dir() else checkpoints
    if not root.is_dir():
        raise FileNotFoundError(f"{checkpoints}: checkpoint folder not found")

    if bamm is not None:
        mask_dir = Path(bamm)
        if not (mask_dir / "opt.txt").is_file():
            raise FileNotFoundError(f"{mask_dir}: BAMM folder with opt.txt not found (expected the release folder "
                                    "2024-02-14-14-27-29_8_GPT_officialTrans_2iterPrdictEnd)")
    else:
        mask_dir = _model_folder(root, mask_name or RELEASED_NAMES[dataset][0], "mask transformer", "mask_name")
    res_dir = _model_folder(root, res_name or RELEASED_NAMES[dataset][1], "residual transformer", "res_name")
    mask_opt, res_opt = Options(mask_dir / "opt.txt"), Options(res_dir / "opt.txt")
    vq_name = mask_opt.get_str("vq_name")
    if res_opt.get_str("vq_name") != vq_name:
        raise ValueError(f"{res_dir / 'opt.txt'}: vq_name {res_opt.get_str('vq_name')!r} differs from the mask "
                         f"transformer's {vq_name!r}; both transformers must use the same RVQ-VAE")
    vq_dir = _model_folder(root, vq_name, "RVQ-VAE (named by the mask transformer's vq_name)", None)
    vq_opt = Options(vq_dir / "opt.txt")

    if bamm is not None and mask_opt.get_str("trans", "official") != "official":
        raise ValueError(f"{mask_opt.path}: trans {mask_opt.get_str('trans')!r} is not supported; only the released "
                         "'official' (nn.TransformerEncoder) BAMM backbone is")
    config = _config_from_options(vq_opt, mask_opt, res_opt, generator="momask" if bamm is None else "bamm")
    folders = {"vq": vq_dir, "mask_transformer": mask_dir, "residual_transformer": res_dir,
               "length_estimator": root / "length_estimator"}
    models = build_empty_models(config)
    sources = []
    for name, module in models.components().items():
        state, source = _load_container(folders[name] / "model", name)
        check_state_dict(module, state, source)
        module.load_state_dict(state, strict=True, assign=True)
        sources.append(f"- {name}: `{source}`")
    models.mean, models.std = (_load_stat(vq_dir / "meta" / f"{s}.npy", config.vq.dim_pose) for s in ("mean", "std"))
    models.eval()

    release = ("the official MoMask release (Guo et al., CVPR 2024, github.com/EricGuo5513/momask-codes)" if bamm is None
               else "the official BAMM release (Pinyoanuntapong et al., ECCV 2024, github.com/exitudio/BAMM; base "
                    "transformer) and the MoMask release it shares (RVQ-VAE, residual transformer, length estimator)")
    provenance = (
        f"Converted from {release} with `safemotion import-momask`. Both are trained on HumanML3D/KIT-ML, whose "
        "source motion data carry their own licence terms.\n\nSource containers:\n" + "\n".join(sources)
        + "\n\nThe text encoder is CLIP ViT-B/32 (raw 512-d `encode_text` feature); supply its weights locally."
        + ("" if bamm is None else BAMM_CARD_NOTE)
    )
    title = f"{'MoMask' if bamm is None else 'BAMM'} ({vq_opt.get_str('dataset_name')}) converted for SafeMotion"
    card = model_card(config, title=title, provenance=provenance)
    return save_model_dir(models, out, card=card, overwrite=overwrite)


def _model_folder(root: Path, name: str, what: str, option: str | None) -> Path:
    folder = root / name
    if (folder / "opt.txt").is_file():
        return folder
    found = sorted(p.name for p in root.iterdir() if (p / "opt.txt").is_file())
    hint = f"; choose one with {option}" if option else ""
    raise FileNotFoundError(f"{folder}: {what} folder with opt.txt not found (folders with opt.txt in {root}: "
                            f"{', '.join(found) or 'none'}){hint}")


def _config_from_options(vq_opt: Options, mask_opt: Options, res_opt: Options, generator: str) -> ModelConfig:
    """Our ModelConfig from the three opt.txt files; unsupported variants raise ValueError naming the option."""
    dataset = vq_opt.get_str("dataset_name")
    if dataset not in DATASETS:
        raise ValueError(f"{vq_opt.path}: dataset_name {dataset!r} is unknown; expected one of {sorted(DATASETS)}")
    code_dim = vq_opt.get_int("code_dim")
    if vq_opt.get_int("output_emb_width") != code_dim:
        raise ValueError(f"{vq_opt.path}: output_emb_width must equal code_dim ({code_dim})")
    if vq_opt.get_bool("shared_codebook"):
        raise ValueError(f"{vq_opt.path}: shared_codebook True is not supported (released models use False)")
    if vq_opt.get_str("vq_norm", "None") != "None":
        raise ValueError(f"{vq_opt.path}: vq_norm {vq_opt.get_str('vq_norm')!r} is not supported (released: None)")
    if not res_opt.get_bool("share_weight"):
        raise ValueError(f"{res_opt.path}: share_weight False is not supported (released models use True)")
    vq = VQConfig(
        dim_pose=DATASETS[dataset]["dim_pose"], nb_code=vq_opt.get_int("nb_code"), code_dim=code_dim,
        width=vq_opt.get_int("width"), down_t=vq_opt.get_int("down_t"), stride_t=vq_opt.get_int("stride_t"),
        depth=vq_opt.get_int("depth"), dilation_growth_rate=vq_opt.get_int("dilation_growth_rate"),
        activation=vq_opt.get_str("vq_act"), num_quantizers=vq_opt.get_int("num_quantizers"),
        quantize_dropout_prob=vq_opt.get_float("quantize_dropout_prob"), mu=vq_opt.get_float("mu"),
    )

    def transformer(opt: Options) -> TransformerConfig:
        return TransformerConfig(
            latent_dim=opt.get_int("latent_dim"), ff_size=opt.get_int("ff_size"),
            num_layers=opt.get_int("n_layers"), num_heads=opt.get_int("n_heads"),
            dropout=opt.get_float("dropout"), cond_drop_prob=opt.get_float("cond_drop_prob"),
            text_dim=CLIP_DIM, num_tokens=vq.nb_code, code_dim=vq.code_dim, num_quantizers=vq.num_quantizers,
        )

    unit_length = mask_opt.get_int("unit_length", 4)
    config = ModelConfig(
        vq=vq, mask_transformer=transformer(mask_opt), residual_transformer=transformer(res_opt),
        length_estimator=LengthEstimatorConfig(text_dim=CLIP_DIM, num_classes=200 // unit_length),
        text_encoder="clip", generator=generator, fps=DATASETS[dataset]["fps"], unit_length=unit_length,
        max_motion_length=mask_opt.get_int("max_motion_length", 196),
    )
    try:
        config.validate()
    except ValueError as err:
        raise ValueError(f"{mask_opt.path.parent}: options give an inconsistent model: {err}") from None
    return config


def _load_container(model_dir: Path, component: str) -> tuple[dict[str, torch.Tensor], str]:
    """State dict of `component` from the first existing container file, and a description of its source."""
    files, keys = CONTAINERS[component]
    file = next((model_dir / f for f in files if (model_dir / f).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{model_dir}: no checkpoint for the {component} (looked for {', '.join(files)})")
    try:
        container: Any = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe pickles
        raise ValueError(f"{file}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: {err})") \
            from None
    if not isinstance(container, dict):
        raise ValueError(f"{file}: expected a dict container, found {type(container).__name__}")
    key = next((k for k in keys if k in container), None)
    if key is None:
        raise ValueError(f"{file}: no state dict under {' or '.join(repr(k) for k in keys)} "
                         f"(keys present: {', '.join(map(str, container)) or 'none'})")
    state = container[key]
    if not isinstance(state, dict):
        raise ValueError(f"{file}: '{key}' is {type(state).__name__}, expected a state dict")
    # Official transformers drop the frozen CLIP weights on save, but strip any that remain (text encoder is separate).
    state = {k: v for k, v in state.items() if not k.startswith("clip_model.")}
    epoch = container.get("ep", container.get("epoch"))
    where = f"{file} ['{key}']" + (f", epoch {epoch}" if epoch is not None else "")
    return state, where


def _load_stat(file: Path, dim: int) -> np.ndarray:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: normalisation statistics not found (expected in the RVQ folder's meta/)")
    array = read_numeric_npy(file, finite=False)
    if array.shape != (dim,):
        raise ValueError(f"{file}: shape {list(array.shape)}, expected [{dim}]")
    return array
