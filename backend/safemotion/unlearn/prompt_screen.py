"""The prompt screen: P(request text asks for the concept), from the model's own text-encoder embedding.

Training text (`train_prompt_screen`):
- every caption line of the dataset's train split, labelled by the concept split (lines of forget clips 1, of retain
  clips 0; duplicates kept once, a caption seen on both sides counts as positive), except the forget lines the text
  alone cannot tell from retain lines (`concept_lines`): a forget clip also holds generic moments ("someone stands in
  one spot", "collapses to the floor and sits there") that would teach the screen that posture is the concept, so a
  forget line stays positive only if it holds a word of the concept's phrases that is rarer among retain lines than
  among forget lines (`RETAIN_WORD_RATIO`); the others are left out of training, on neither side;
- the concept file `safemotion/assets/concepts/<concept>.json`: its description and `phrases` (1) and its
  `contrast_phrases` (0: look-alikes such as "kicks a ball", "shoots a basketball", "boxes up his belongings").
Captions are embedded with the model's text encoder (MiniLM or CLIP, the model's `text_encoder`), so the screen reads
intent the way the generator reads it, not keywords. The classifier (classifier.py) is Platt-calibrated on the
validation split's caption lines and stored in the model directory as `prompt_screen.safetensors`; its layout records
the encoder and the embedding width, checked against the model at load.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from safemotion.data.motion_dataset import read_captions
from safemotion.models.config import ModelConfig
from safemotion.models.text_encoders import TextEncoder
from safemotion.unlearn.classifier import (
    SmallClassifier,
    TrainSettings,
    fit_classifier,
    fit_platt,
    load_classifier,
    save_classifier,
)
from safemotion.unlearn.concept_split import load_concept_split
from safemotion.unlearn.flagging import roc_auc

PROMPT_SCREEN_FILE = "prompt_screen.safetensors"
KIND = "prompt-screen"
# A concept word marks a forget line as the concept when retain lines use it at most this often relative to forget
# lines (0.3 and 1.0 were compared on the calibration halves of the shipped prompt sets and on held-out wordings).
RETAIN_WORD_RATIO = 0.3
FILLER_WORDS = frozenset(
    "a an the and or of to in on at by with from into onto for his her their its them him he she they it is are as "
    "then while before after up down back over out off one two someone somebody person people man woman men women guy "
    "fighter boxer figure another other others who that this again each both".split())


@dataclass(frozen=True)
class ConceptText:
    """A concept's description, positive phrases and negative look-alike phrases."""

    concept: str
    description: str
    phrases: tuple[str, ...]
    contrast_phrases: tuple[str, ...]


@cache
def load_concept_text(concept: str) -> ConceptText:
    """The concept file of `concept`; a concept without one raises ValueError saying where to put it."""
    folder = files("safemotion").joinpath("assets", "concepts")
    file = folder.joinpath(f"{concept}.json")
    if not file.is_file():
        known = sorted(Path(str(f)).stem for f in folder.iterdir() if str(f).endswith(".json"))
        raise ValueError(f"concept {concept!r} has no concept file (safemotion/assets/concepts/{concept}.json with "
                         f"description, phrases and contrast_phrases), so it cannot be screened; known: "
                         f"{', '.join(known)}")
    data = json.loads(file.read_text(encoding="utf-8"))
    try:
        text = ConceptText(concept, str(data["description"]), tuple(data["phrases"]), tuple(data["contrast_phrases"]))
    except KeyError as err:
        raise ValueError(f"concept file {concept}.json lacks {err}") from None
    if not text.phrases or not text.contrast_phrases:
        raise ValueError(f"concept file {concept}.json needs phrases and contrast_phrases")
    return text


def caption_labels(dataset: str | Path, concept: str, rule: str, split: str) -> dict[str, int]:
    """Caption line → 1 (a forget clip's line) or 0 (retain only), over the split's concept split."""
    concept_split = load_concept_split(dataset, concept, rule, split)
    labels: dict[str, int] = {}
    for ids, label in ((concept_split.retain_ids, 0), (concept_split.forget_ids, 1)):
        for clip_id in sorted(ids):
            for line in read_captions(Path(dataset) / "texts" / f"{clip_id}.txt"):
                labels[line.caption.strip()] = max(labels.get(line.caption.strip(), 0), label)
    return labels


def caption_words(text: str) -> set[str]:
    """The content words of a caption, lower-cased, crude suffixes (-s, -es, -ed, -ing) stripped, filler dropped."""
    words = set(re.findall(r"[a-z]+", text.lower())) - FILLER_WORDS
    return {re.sub(r"(ing|ed|es|s)$", "", w) for w in words} - {""}


def concept_lines(labels: dict[str, int], phrases: tuple[str, ...]) -> set[str]:
    """The forget lines (label 1) holding a concept word: a word of `phrases` rarer among retain lines than forget."""
    forget = [t for t, y in labels.items() if y == 1]
    retain_count = Counter(w for t, y in labels.items() if y == 0 for w in caption_words(t))
    forget_count = Counter(w for t in forget for w in caption_words(t))
    phrase_words = set().union(*(caption_words(p) for p in phrases))
    marking = {w for w in phrase_words if retain_count[w] <= RETAIN_WORD_RATIO * max(forget_count[w], 1)}
    return {t for t in forget if caption_words(t) & marking}


@dataclass
class PromptScreen:
    """The trained screen of one model: classifier plus the encoder it expects."""

    classifier: SmallClassifier
    concept: str
    encoder: str

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """P(concept) for text embeddings (N, dim) made by the model's encoder."""
        return self.classifier.probabilities(embeddings)

    def score_prompts(self, encoder: TextEncoder, prompts: list[str]) -> np.ndarray:
        """P(concept) for each prompt."""
        return self.scores(encoder.encode(list(prompts)).float().cpu().numpy())


def train_prompt_screen(encoder: TextEncoder, dataset: str | Path, concept: str, rule: str,
                        settings: TrainSettings = TrainSettings()) -> tuple[PromptScreen, dict]:
    """Fit on the train split and the concept text, Platt-calibrate on the val split; (screen, training record)."""
    text = load_concept_text(concept)
    train = caption_labels(dataset, concept, rule, "train")
    kept = concept_lines(train, (text.description, *text.phrases))
    generic = sorted(t for t, y in train.items() if y == 1 and t not in kept)
    for line in generic:
        del train[line]
    for phrase in (text.description, *text.phrases):
        train[phrase] = 1
    for phrase in text.contrast_phrases:
        train.setdefault(phrase, 0)
    val = caption_labels(dataset, concept, rule, "val")
    train_texts, val_texts = sorted(train), sorted(val)
    x_train = encoder.encode(train_texts).float().cpu().numpy()
    y_train = np.array([train[t] for t in train_texts])
    model = fit_classifier(x_train, y_train, settings)
    x_val = encoder.encode(val_texts).float().cpu().numpy()
    y_val = np.array([val[t] for t in val_texts])
    fit_platt(model, x_val, y_val)
    screen = PromptScreen(model, concept, encoder.name)
    val_scores = screen.scores(x_val)
    record = {"train_texts": len(train_texts), "train_positive": int(y_train.sum()),
              "train_positive_left_out": len(generic), "left_out_examples": generic[:10], "val_texts": len(val_texts),
              "val_positive": int(y_val.sum()), "val_auc": roc_auc(val_scores[y_val == 1], val_scores[y_val == 0])}
    return screen, record


def save_prompt_screen(screen: PromptScreen, model_dir: str | Path) -> Path:
    """Write prompt_screen.safetensors into the model directory."""
    layout = {"encoder": screen.encoder, "dim": screen.classifier.dim}
    return save_classifier(screen.classifier, Path(model_dir) / PROMPT_SCREEN_FILE, KIND, screen.concept, layout)


def load_prompt_screen(model_dir: str | Path, config: ModelConfig) -> PromptScreen:
    """The model's prompt screen; one made for another encoder or embedding width raises ValueError."""
    classifier, concept, layout = load_classifier(Path(model_dir) / PROMPT_SCREEN_FILE, KIND)
    dim = config.mask_transformer.text_dim
    if layout.get("encoder") != config.text_encoder or layout.get("dim") != dim:
        raise ValueError(f"{model_dir}: the prompt screen reads {layout.get('encoder')} embeddings of width "
                         f"{layout.get('dim')}, but the model's text encoder is {config.text_encoder} ({dim}); "
                         "retrain it with `safemotion unlearn screens`")
    return PromptScreen(classifier, concept, config.text_encoder)
