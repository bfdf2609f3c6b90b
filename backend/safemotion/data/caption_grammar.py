"""What dataset captions say: a small grammar over each source's labels and each window's measured motion.

A caption is a subject, a verb phrase (the content), and optional modifiers (style, direction, speed, body part),
put into a sentence frame (simple present or progressive). `compose` draws several distinct sentences for a clip,
varying the subject, the verb phrase inside its paraphrase family, the modifier wording and the frame; the draws
come from a `random.Random` seeded with a string (seed + clip key), so captions are the same on every run.

Two kinds of input:
- **Labels** (per take): Bandai content x style, DeepMimic clip names, CMU descriptions. They give the content
  phrases that every window of the take shares (`bandai_captions`, `deepmimic_captions`, `cmu_description_captions`).
- **Measured facts** (per window, `measure_motion`): where the pelvis went (forward / backward / left / right / in
  place, in the window's first-frame facing), how fast, and how high the hands go. For takes whose content is
  walking, running, idling or a gesture made standing, `window_captions` adds paraphrases from plain families
  (standing still / idling / waiting; slow / easy / relaxed walking; brisk walking; jogging / sprinting; gestures
  made "in place" or "over the head"), chosen by the measurement, never by a name, so "slow" captions go with slow
  windows. Stretches where the person stands upright,
  arms down and still for 2 s or more (`still_ranges`) become clips of their own with STILL captions only
  (`still_captions`).

No caption, nor its left/right mirror, equals a prompt of the shipped prompt sets or the adherence suite
(`held_out_prompts`): those are the wordings the model is tested on, so `compose` skips them (compared lower-case
without punctuation) and the dataset builder drops such captions from the human-written sources.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from safemotion.data.captions import clean_caption, is_verb_form, mirror_caption, progressive, third_person

SUBJECTS = ("a person", "someone", "the person", "somebody", "a human", "an individual")
# Sentence frames: {subject} and the verb phrase in the simple present ({present}) or progressive ({progressive}).
FRAMES = ("{subject} {present}", "{subject} {present}", "{subject} is {progressive}")
DRAWS_PER_CAPTION = 20  # attempts per wanted caption before giving up on finding another distinct one

# --- measured facts -----------------------------------------------------------------------------------------------

FPS = 20.0
PELVIS, HEAD, LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_WRIST, RIGHT_WRIST = 0, 15, 16, 17, 20, 21
IN_PLACE_M = 0.5  # the pelvis ends within this horizontal distance of its start: the window stays in place
STILL_BODY_SPEED = 0.25  # m/s, mean joint speed relative to the pelvis below which a standing body counts as still
# Speeds (m/s, pelvis path over time). Bandai walks measure 1.07-1.29 m/s in the normal style, 0.37-0.86 in the
# sad, unsure, old and proud styles and 1.5-1.56 in the active style; runs 1.7-3.3, dashes 2.5-4.2.
SLOW_WALK = 0.85
BRISK_WALK = 1.5
SLOW_RUN = 2.5
FAST_RUN = 3.5


@dataclass(frozen=True)
class MotionFacts:
    """Measured pelvis travel of a window: path speed, net displacement in the first-frame facing, body speed."""

    speed: float  # m/s, horizontal pelvis path length over the duration
    forward_m: float  # net pelvis displacement along the first frame's facing (+Z after canonicalisation)
    left_m: float  # net displacement to the character's left (+x)
    body_speed: float  # m/s, mean speed of the joints relative to the pelvis
    hand_over_head_m: float = 0.0  # highest wrist above the head over the window (negative: never above it)

    @property
    def travel(self) -> str:
        """'forward', 'backward', 'left', 'right' or 'in place' by the dominant net displacement."""
        if max(abs(self.forward_m), abs(self.left_m)) < IN_PLACE_M:
            return "in place"
        if abs(self.forward_m) >= abs(self.left_m):
            return "forward" if self.forward_m > 0 else "backward"
        return "left" if self.left_m > 0 else "right"

    @property
    def still(self) -> bool:
        """Stays in place with hardly any limb movement."""
        return self.travel == "in place" and self.body_speed < STILL_BODY_SPEED


def measure_motion(joints: np.ndarray, fps: float = FPS) -> MotionFacts:
    """Facts of a canonical window, joints [T, 22, 3] (Y up, frame 0 facing +Z with the left side at +x)."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3) or len(joints) < 2:
        raise ValueError(f"measure_motion: expected joints [T >= 2, 22, 3], got {joints.shape}")
    seconds = (len(joints) - 1) / fps
    pelvis = joints[:, 0, [0, 2]]
    path = float(np.linalg.norm(np.diff(pelvis, axis=0), axis=-1).sum())
    relative = joints[:, 1:] - joints[:, :1]
    body = float(np.linalg.norm(np.diff(relative, axis=0), axis=-1).mean() * fps)
    net = pelvis[-1] - pelvis[0]
    over_head = float((joints[:, [LEFT_WRIST, RIGHT_WRIST], 1].max(axis=1) - joints[:, HEAD, 1]).max())
    return MotionFacts(speed=path / seconds, forward_m=float(net[1]), left_m=float(net[0]), body_speed=body,
                       hand_over_head_m=over_head)


# A stretch of a take where the person stands upright, arms down and still becomes a clip of its own, captioned only
# from the STILL family: takes rarely show standing still as their content, but many begin or end that way.
STILL_MIN_FRAMES = 40  # 2 s
STILL_SMOOTH_FRAMES = 10  # per-frame speeds are averaged over 0.5 s
STILL_FRAME_BODY_SPEED = 0.15  # m/s, mean joint speed relative to the pelvis
STILL_FRAME_ROOT_SPEED = 0.1  # m/s, pelvis ground speed
ARMS_DOWN_M = 0.25  # both wrists at least this far below the lower shoulder: resting arms, not a held gesture
UPRIGHT_M = 0.45  # the head at least this far above the pelvis: standing, not crouching or bowing


def still_ranges(joints: np.ndarray, fps: float = FPS) -> list[tuple[int, int]]:
    """[start, end) feature-frame ranges (joints start..end) of at least STILL_MIN_FRAMES frames where the person
    stands upright, arms down and still; joints [T, 22, 3], Y up."""
    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (22, 3):
        raise ValueError(f"still_ranges: expected joints [T, 22, 3], got {joints.shape}")
    if len(joints) <= STILL_MIN_FRAMES:
        return []
    box = np.ones(STILL_SMOOTH_FRAMES) / STILL_SMOOTH_FRAMES
    relative = joints[:, 1:] - joints[:, :1]
    body = np.convolve(np.linalg.norm(np.diff(relative, axis=0), axis=-1).mean(axis=1) * fps, box, "same")
    root = np.convolve(np.linalg.norm(np.diff(joints[:, 0, [0, 2]], axis=0), axis=-1) * fps, box, "same")
    pose = joints[1:, :, 1]
    arms_down = (np.maximum(pose[:, LEFT_WRIST], pose[:, RIGHT_WRIST])
                 < np.minimum(pose[:, LEFT_SHOULDER], pose[:, RIGHT_SHOULDER]) - ARMS_DOWN_M)
    upright = pose[:, HEAD] - pose[:, PELVIS] > UPRIGHT_M
    still = (body < STILL_FRAME_BODY_SPEED) & (root < STILL_FRAME_ROOT_SPEED) & arms_down & upright
    edges = np.flatnonzero(np.diff(np.concatenate([[0], still.astype(np.int8), [0]])))
    return [(int(start), int(end)) for start, end in zip(edges[::2], edges[1::2]) if end - start >= STILL_MIN_FRAMES]


# --- phrase families ----------------------------------------------------------------------------------------------

STILL = (
    "stands still", "stays in place", "stands in one spot", "waits in place", "idles on the spot", "remains standing",
    "holds still", "stands and waits", "lingers in one place", "stands around waiting", "waits without moving",
    "stands motionless",
)
WALK = {
    "slow": ("walks slowly", "strolls", "ambles", "walks at an easy pace", "walks in a relaxed way",
             "walks unhurriedly", "takes a leisurely walk", "saunters", "walks at a gentle pace", "strolls casually"),
    "normal": ("walks", "walks at a normal pace", "walks steadily", "takes steps", "walks at a regular pace",
               "goes on foot"),
    "fast": ("walks briskly", "walks quickly", "strides", "walks at a fast pace", "hurries on foot",
             "walks with long quick steps"),
}
RUN = {
    "slow": ("jogs", "runs slowly", "jogs lightly", "runs at an easy pace", "jogs at a relaxed pace"),
    "normal": ("runs", "runs steadily", "runs at a moderate pace"),
    "fast": ("sprints", "runs fast", "races", "runs at full speed", "dashes"),
}
DIRECTION = {
    "forward": ("forward", "ahead", "straight ahead", "forwards"),
    "backward": ("backwards", "backward", "in reverse"),
    "left": ("to the left", "toward the left", "leftward", "sideways to the left"),
    "right": ("to the right", "toward the right", "rightward", "sideways to the right"),
    "in place": ("in place", "on the spot"),
}
IN_PLACE = ("in place", "on the spot", "without walking anywhere", "while standing in one place",
            "without leaving the spot")
HAND_OVER_HEAD_M = 0.05  # a wrist this far above the head: the gesture goes over the head
OVER_HEAD = ("over the head", "above the head", "high over the head", "up above the head")


def speed_class(kind: str, speed: float) -> str:
    """'slow', 'normal' or 'fast' for a measured walking or running speed (m/s)."""
    slow, fast = (SLOW_WALK, BRISK_WALK) if kind == "walk" else (SLOW_RUN, FAST_RUN)
    return "slow" if speed < slow else "fast" if speed > fast else "normal"


# --- composition --------------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, letters, apostrophes and single spaces only: the form captions and prompts are compared in."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


@cache
def held_out_prompts() -> frozenset[str]:
    """Normalised prompts of the shipped prompt sets and of the adherence suite; captions never equal one."""
    from safemotion.eval import adherence
    from safemotion.unlearn.prompt_sets import PROMPT_SETS, load_prompt_set

    prompts = [prompt for name in PROMPT_SETS for prompt in load_prompt_set(name)]
    prompts += _constant_strings(value for name, value in vars(adherence).items() if name.isupper())
    return frozenset(normalize(p) for p in prompts)


def copies_held_out_prompt(caption: str) -> bool:
    """True when the caption, or its left/right mirror (written for the mirrored clip), equals a held-out prompt."""
    held_out = held_out_prompts()
    return normalize(caption) in held_out or normalize(mirror_caption(caption)) in held_out


def _constant_strings(values: Iterable[object]) -> list[str]:
    """Every string inside (nested) dicts, tuples, lists and sets."""
    found: list[str] = []
    for value in values:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            found += _constant_strings([*value.keys(), *value.values()])
        elif isinstance(value, (tuple, list, set, frozenset)):
            found += _constant_strings(value)
    return found


def compose(
    phrases: Sequence[str], modifiers: Sequence[Sequence[str]], count: int, key: str, seed: int = 0,
    avoid: Iterable[str] = (),
) -> list[str]:
    """Up to `count` distinct captions: subject + a phrase + one wording of each modifier ('' = leave out) in a frame.

    Phrases are third-person verb phrases and are used in turn (shuffled) so the captions of a clip use different
    verbs; captions equal to a held-out prompt or to one in `avoid` are skipped.
    """
    if not phrases:
        raise ValueError(f"{key}: no verb phrase to caption")
    rng = random.Random(f"{seed}:{key}")
    order = rng.sample(list(phrases), len(phrases))
    avoided = {normalize(a) for a in avoid}
    captions: list[str] = []
    seen: set[str] = set()
    for attempt in range(count * DRAWS_PER_CAPTION):
        if len(captions) == count:
            break
        words = " ".join(filter(None, (order[attempt % len(order)], *(rng.choice(m) for m in modifiers))))
        frame, ongoing = rng.choice(FRAMES), progressive(words)
        if ongoing.split()[0] == words.split()[0]:  # a verb the progressive does not know ('practises'): present
            frame = FRAMES[0]
        text = frame.format(subject=rng.choice(SUBJECTS), present=words, progressive=ongoing)
        if normalize(text) not in avoided | seen and not copies_held_out_prompt(text):
            seen.add(normalize(text))
            captions.append(text)
    return captions


# --- label grammars per source ------------------------------------------------------------------------------------

# Bandai content label -> verb phrases (third person).
BANDAI_CONTENT = {
    "walk": ("walks forward", "walks ahead", "takes a few steps forward", "walks straight ahead"),
    "run": ("runs forward", "runs ahead", "jogs forward", "runs straight ahead"),
    "dash": ("dashes forward", "sprints forward", "runs forward quickly", "dashes ahead"),
    "walk-back": ("walks backwards", "steps backwards", "walks backward", "walks in reverse"),
    "walk-left": ("walks to the left", "walks toward the left", "moves to the left while walking",
                  "walks leftward"),
    "walk-right": ("walks to the right", "walks toward the right", "moves to the right while walking",
                   "walks rightward"),
    "bow": ("bows", "takes a bow", "bows politely", "bends forward in a bow"),
    "bye": ("waves goodbye", "waves a hand to say goodbye", "says goodbye with a wave", "waves farewell"),
    "guide": ("gestures to guide someone", "shows the way with one arm", "guides someone with a hand gesture",
              "points the way with an arm"),
    "byebye": ("waves goodbye energetically", "waves bye-bye", "waves a big goodbye", "waves farewell eagerly"),
    "respond": ("responds to someone", "responds with a gesture", "reacts to someone", "answers with a gesture"),
    "call": ("calls out to someone", "calls someone over", "beckons someone", "waves someone over"),
    "punch": ("throws punches", "punches", "punches forward", "throws a few punches"),
    "kick": ("kicks", "throws a kick", "kicks forward", "kicks out with a leg"),
    "slash": ("slashes with a sword", "swings a sword", "slashes", "cuts through the air with a sword"),
    "dance-long": ("dances", "performs a long dance", "dances for a while", "dances for some time"),
    "dance-short": ("dances briefly", "performs a short dance", "does a short dance", "dances for a moment"),
    "walk-turn-left": ("walks and turns left", "walks forward and turns to the left", "turns left while walking",
                       "walks and makes a left turn"),
    "walk-turn-right": ("walks and turns right", "walks forward and turns to the right", "turns right while walking",
                        "walks and makes a right turn"),
    "wave-both-hands": ("waves both hands", "waves with both hands", "waves both arms", "waves with both arms"),
    "wave-left-hand": ("waves the left hand", "waves with the left hand", "waves the left hand in greeting",
                       "greets with a wave of the left hand"),
    "wave-right-hand": ("waves the right hand", "waves with the right hand", "waves the right hand in greeting",
                        "greets with a wave of the right hand"),
    "raise-up-both-hands": ("raises both hands", "raises both hands up", "lifts both arms up",
                            "puts both hands up"),
    "raise-up-left-hand": ("raises the left hand", "lifts the left arm up", "raises the left hand up",
                           "puts the left hand up"),
    "raise-up-right-hand": ("raises the right hand", "lifts the right arm up", "raises the right hand up",
                            "puts the right hand up"),
}
# Bandai style label -> manner phrases ("" = no style words).
BANDAI_STYLE = {
    "normal": ("", "", "normally"),
    "happy": ("happily", "in a happy way", "cheerfully"),
    "sad": ("sadly", "in a sad way", "gloomily"),
    "angry": ("angrily", "in an angry way", "furiously"),
    "proud": ("proudly", "in a proud way", "with pride"),
    "not-confident": ("without confidence", "in an unsure way", "hesitantly"),
    "masculinity": ("in a masculine way", "in a manly way", "with a masculine manner"),
    "masculine": ("in a masculine way", "in a manly way", "with a masculine manner"),
    "feminine": ("in a feminine way", "in a girly way", "with a feminine manner"),
    "childish": ("like a child", "in a childish way", "childishly"),
    "old": ("like an old person", "like an elderly person", "in an old way"),
    "elderly": ("like an elderly person", "like an old person", "in an elderly way"),
    "tired": ("tiredly", "in a tired way", "wearily"),
    "exhausted": ("in an exhausted way", "as if exhausted", "wearily"),
    "active": ("actively", "in an active way", "energetically"),
    "youthful": ("in a youthful way", "youthfully", "like a young person"),
    "musical": ("like in a musical", "theatrically", "in a musical style"),
    "giant": ("like a giant", "heavily like a giant", "in a giant way"),
    "chimpira": ("like a thug", "in a thuggish way", "like a street punk"),
}
# What a Bandai content is, for the measured paraphrases of `window_captions`.
BANDAI_KIND = {
    "walk": "walk", "walk-back": "walk", "walk-left": "walk", "walk-right": "walk", "run": "run", "dash": "run",
    **{content: "gesture" for content in (
        "bow", "bye", "guide", "byebye", "respond", "call", "wave-both-hands", "wave-left-hand", "wave-right-hand",
        "raise-up-both-hands", "raise-up-left-hand", "raise-up-right-hand",
    )},
}

DEEPMIMIC_PHRASES = {
    "backflip": ("does a backflip", "performs a back flip", "jumps and flips backwards", "flips over backwards"),
    "cartwheel": ("does a cartwheel", "performs a cartwheel", "turns a cartwheel", "wheels sideways over the hands"),
    "crawl": ("crawls forward on hands and knees", "crawls on all fours", "crawls", "moves forward on all fours"),
    "dance_a": ("dances", "does a short dance", "dances in place", "moves to a dance"),
    "dance_b": ("dances energetically", "performs a dance", "dances with arm movements", "dances with big arm moves"),
    "getup_facedown": ("gets up from lying face down", "gets up from lying on the stomach",
                       "stands up from a face down position", "pushes up off the stomach and stands"),
    "getup_faceup": ("gets up from lying on the back", "stands up from lying face up", "gets up from the ground",
                     "rises from lying on the back"),
    "jump": ("jumps", "jumps forward", "does a jump", "leaps forward"),
    "kick": ("kicks", "throws a kick", "kicks with one leg", "kicks out forward"),
    "punch": ("throws a punch", "punches forward", "punches", "throws a straight punch"),
    "roll": ("does a roll on the ground", "rolls on the ground", "rolls over", "rolls across the floor"),
    "run": ("runs forward", "runs", "jogs forward", "runs ahead"),
    "spin": ("spins around", "turns around in place", "spins in a circle", "turns a full circle"),
    "spinkick": ("performs a spin kick", "does a spinning kick", "spins and kicks", "kicks while spinning around"),
    "walk": ("walks forward", "walks", "walks straight ahead", "walks ahead"),
}
DEEPMIMIC_KIND = {"walk": "walk", "run": "run"}

# CMU subjects whose descriptions are bare move names (e.g. "Bassai"), with the activity they belong to.
CMU_SUBJECT_ACTIVITY = {85: "breakdance", 135: "karate kata"}
# Description prefixes ("basketball - dribble") -> phrase appended after the action.
_CMU_CONTEXT = {"playground": "on a playground", "dance": "while dancing", "basketball": "while playing basketball"}
CAPTIONS_PER_CLIP = 3


def bandai_captions(content: str, style: str, key: str, seed: int = 0) -> list[str]:
    """Three captions for a Bandai clip from its content and style labels."""
    if content not in BANDAI_CONTENT:
        raise ValueError(f"{key}: unknown Bandai content label {content!r}; known: {', '.join(BANDAI_CONTENT)}")
    if style not in BANDAI_STYLE:
        raise ValueError(f"{key}: unknown Bandai style label {style!r}; known: {', '.join(BANDAI_STYLE)}")
    return compose(BANDAI_CONTENT[content], [BANDAI_STYLE[style]], CAPTIONS_PER_CLIP, key, seed)


def _split_camel_case(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()


def cmu_description_captions(description: str, subject: int, key: str = "", seed: int = 0) -> list[str]:
    """Three captions from a CMU trial description (`cmu_trials.csv`), e.g. 'basketball - forward dribble'."""
    activity = CMU_SUBJECT_ACTIVITY.get(subject)
    if activity:
        move = _split_camel_case(description.strip())
        phrases = (f"performs {move}, a {activity}", f"does {activity}: {move}", f"practises {move} ({activity})")
    else:
        text = clean_caption(description)
        context, _, actions = text.rpartition(" - ")
        parts = [third_person(part.strip()) for part in actions.split(",") if part.strip()]
        if not is_verb_form(parts[0].split()[0]):
            parts[0] = f"performs {parts[0]}"
        tail = f" {_CMU_CONTEXT.get(context, context)}" if context else ""
        phrases = (", ".join(parts) + tail,)
    return compose(phrases, [], CAPTIONS_PER_CLIP, key or description, seed)


def deepmimic_captions(name: str, seed: int = 0) -> list[str]:
    """Three captions for a DeepMimic clip name (file name without `humanoid3d_`)."""
    phrases = DEEPMIMIC_PHRASES.get(name, (f"performs a {name.replace('_', ' ')}",))
    return compose(phrases, [], CAPTIONS_PER_CLIP, f"deepmimic/{name}", seed)


def still_captions(key: str, seed: int = 0) -> list[str]:
    """Three captions for a measured standing-still clip (`still_ranges`), from the STILL family only."""
    return compose(STILL, [], CAPTIONS_PER_CLIP, key, seed)


def window_captions(kind: str | None, phrases: Sequence[str], facts: MotionFacts, key: str, seed: int = 0,
                    avoid: Iterable[str] = ()) -> list[str]:
    """Paraphrases from the plain families that the measured window supports, for a take of the given kind.

    kind: "walk" / "run" (measured travel direction and speed class; nothing when it ends in place), "idle" (standing still when measured still),
    "gesture" (the take's own phrases, made in place when the window stays in place, and over the head when a wrist
    rises above it); None adds nothing.
    """
    if kind in ("walk", "run"):
        if facts.travel == "in place":  # walking on a curve or on the spot: no direction or speed to claim
            return []
        family = (WALK if kind == "walk" else RUN)[speed_class(kind, facts.speed)]
        return compose(family, [DIRECTION[facts.travel]], 2, key, seed, avoid)
    if kind == "idle" and facts.still:
        return compose(STILL, [], 2, key, seed, avoid)
    if kind == "gesture" and phrases:
        captions = compose(phrases, [IN_PLACE], 1, key, seed, avoid) if facts.travel == "in place" else []
        if facts.hand_over_head_m > HAND_OVER_HEAD_M:
            captions += compose(phrases, [OVER_HEAD], 1, f"{key}:over-head", seed, [*avoid, *captions])
        return captions
    return []
