"""Caption text for SafeMotion datasets: left/right swapping for mirrors, verb inflection, HumanML3D text lines.

A HumanML3D caption line is `caption#word/POS word/POS ...#start#end`. HumanML3D fills the token field with spaCy
(lemma of nouns and verbs, the word itself otherwise, universal POS tags, non-alphabetic tokens dropped, hyphens
removed first). spaCy is not a SafeMotion dependency, so `tag_tokens` is a small deterministic stand-in: a lexicon of
closed-class words and motion verbs with their inflections, suffix rules (`-ly` adverbs, plural nouns, unknown
`-ing`/`-ed` words as verbs, everything else a noun) and two context rules (a verb form after a determiner, adjective
or number is a noun - "a kick" - and so is one right after a verb unless it ends in -ing - "throws punches"). It is
right for the short motion captions built here and approximate for free text; the tags feed only the text-to-motion
evaluator's one-hot POS input.

What the captions say (the grammar over each source's labels and the measured motion) is `caption_grammar`.
"""

from __future__ import annotations

import re

# --- mirroring ----------------------------------------------------------------------------------------------------

_MIRROR_WORDS = {
    "left": "right", "right": "left",
    "leftward": "rightward", "rightward": "leftward",
    "leftwards": "rightwards", "rightwards": "leftwards",
    "leftmost": "rightmost", "rightmost": "leftmost",
    "counterclockwise": "clockwise", "counter-clockwise": "clockwise",
    "anticlockwise": "clockwise", "anti-clockwise": "clockwise",
    "clockwise": "counterclockwise",
}
# Longest first so "counter-clockwise" wins over its "clockwise" suffix.
_MIRROR_RE = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, _MIRROR_WORDS), key=len, reverse=True)) + r")\b", re.IGNORECASE
)
# "right" that means "immediately"/"correct", not a side.
_NOT_A_SIDE_RE = re.compile(r"\b(right (?:away|now)|all right)\b", re.IGNORECASE)


def mirror_caption(text: str) -> str:
    """Swap left/right words (left, leftward(s), clockwise, ...) for the mirrored motion, keeping capitalisation."""
    protected = [(m.start(), m.end()) for m in _NOT_A_SIDE_RE.finditer(text)]

    def swap(match: re.Match[str]) -> str:
        if any(start <= match.start() < end for start, end in protected):
            return match.group(0)
        word = match.group(0)
        new = _MIRROR_WORDS[word.lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _MIRROR_RE.sub(swap, text)


# --- tokens -------------------------------------------------------------------------------------------------------

_CLOSED_CLASS: dict[str, tuple[str, ...]] = {
    "DET": ("a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its", "my", "your", "our",
            "some", "any", "each", "every", "another", "both", "all", "no", "either", "neither"),
    "PRON": ("i", "you", "he", "she", "it", "we", "they", "me", "him", "us", "them", "someone", "somebody",
             "something", "anyone", "anything", "everyone", "everything", "himself", "herself", "itself",
             "themselves", "oneself", "self", "who", "what", "which"),
    "ADP": ("in", "on", "at", "with", "to", "from", "into", "onto", "over", "under", "of", "for", "by", "about",
            "around", "through", "across", "along", "behind", "toward", "towards", "like", "after", "before",
            "during", "above", "below", "between", "against", "without", "near", "upon"),
    "CCONJ": ("and", "or", "but", "nor"),
    "SCONJ": ("while", "as", "if", "until", "because", "than", "whether", "when"),
    "AUX": ("is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "does", "do", "did", "can",
            "could", "will", "would", "should", "may", "might", "must"),
    "PART": ("not",),
    "NUM": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twenty", "hundred"),
    "ADV": ("forward", "forwards", "backward", "backwards", "sideways", "sidewards", "then", "again", "away", "back",
            "up", "down", "out", "off", "very", "too", "also", "still", "just", "once", "twice", "together",
            "straight", "ahead", "there", "here", "quickly", "slowly", "briefly", "repeatedly", "so", "almost",
            "clockwise", "counterclockwise", "anticlockwise", "leftward", "rightward", "leftwards", "rightwards"),
    "ADJ": ("slow", "fast", "small", "large", "big", "high", "low", "quick", "happy", "sad", "angry", "proud", "tired",
            "old", "young", "elderly", "masculine", "feminine", "childish", "active", "musical", "exhausted",
            "youthful", "heavy", "long", "short", "full", "whole", "other", "uneven", "expressive", "normal",
            "circular", "brisk", "polite", "energetic", "wide", "narrow", "different", "same", "unsure", "thuggish",
            "confident", "first", "second", "third", "last", "next", "few", "several", "many", "much", "light",
            "hard", "soft", "upright", "fancy", "giant", "forceful", "gentle", "ballet"),
}
_CLOSED_WORDS = {word: pos for pos, words in _CLOSED_CLASS.items() for word in words}

_VERBS = (
    "walk", "run", "jog", "dash", "sprint", "jump", "hop", "skip", "leap", "kick", "punch", "strike", "hit", "beat",
    "jab", "slap", "stab", "slash", "fight", "box", "attack", "threaten", "shoot", "wave", "raise", "lift", "lower",
    "turn", "bow", "dance", "step", "move", "swing", "throw", "catch", "crawl", "roll", "spin", "flip", "sit",
    "stand", "get", "rise", "bend", "scoop", "pick", "hold", "wash", "climb", "dangle", "rock", "push", "pull",
    "balance", "dribble", "perform", "do", "make", "take", "go", "come", "look", "stretch", "reach", "shake", "clap",
    "point", "stomp", "march", "respond", "react", "call", "guide", "greet", "say", "show", "gesture", "play",
    "twist", "lean", "squat", "kneel", "lie", "fall", "carry", "place", "put", "open", "close", "touch", "bounce",
    "circle", "rotate", "tilt", "nod", "tap", "drag", "slide", "sway", "pause", "stop", "start", "begin",
    "continue", "repeat", "return", "cross", "face", "beckon", "swim", "fold", "drink", "eat", "wipe", "sweep",
    "stumble", "trip", "limp", "tiptoe", "shuffle", "pace", "wander", "hurry", "salute", "signal", "pose",
    "use", "keep", "give", "bring", "lead", "try", "seem", "appear", "shift", "swap", "switch", "grab", "drop",
    "stroll", "amble", "saunter", "wait", "stay", "remain", "idle", "linger", "stride", "race", "advance", "retreat",
    "sidestep", "travel", "rest", "glance", "hover", "jolt", "stagger", "block", "parry", "dodge", "taunt",
)
_IRREGULAR_VERBS = {
    "ran": "run", "threw": "throw", "thrown": "throw", "stood": "stand", "sat": "sit", "got": "get",
    "gotten": "get", "rose": "rise", "risen": "rise", "bent": "bend", "held": "hold", "took": "take", "taken": "take",
    "did": "do", "done": "do", "made": "make", "went": "go", "gone": "go", "came": "come", "fell": "fall",
    "fallen": "fall", "lay": "lie", "lying": "lie", "lies": "lie", "swung": "swing", "spun": "spin",
    "struck": "strike", "fought": "fight", "caught": "catch", "said": "say", "shook": "shake", "shaken": "shake",
    "knelt": "kneel", "leapt": "leap", "kept": "keep", "gave": "give", "given": "give", "brought": "bring",
    "led": "lead", "began": "begin", "begun": "begin", "beaten": "beat", "shot": "shoot", "slid": "slide",
    "swam": "swim", "drank": "drink", "ate": "eat", "eaten": "eat", "shown": "show",
}
# Final consonant doubles before -ing/-ed (run -> running, hop -> hopped).
_DOUBLING = {
    "run", "jog", "hop", "skip", "jab", "slap", "stab", "step", "sit", "get", "spin", "flip", "clap", "stop", "nod",
    "tap", "drag", "trip", "hit", "put", "begin", "swim", "drop", "grab", "swap",
}


def _third_person_verb(verb: str) -> str:
    """Third-person singular of a base verb (walk -> walks, punch -> punches, carry -> carries)."""
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _suffix_stem(verb: str) -> str:
    """A base verb's stem before -ing/-ed: doubled final consonant (run -> runn), silent e dropped (dance -> danc)."""
    if verb.endswith("e") and not verb.endswith(("ee", "ye", "oe")):
        return verb[:-1]
    return verb + verb[-1] if verb in _DOUBLING else verb


def present_participle(verb: str) -> str:
    """The -ing form of a base verb (walk -> walking, run -> running, dance -> dancing, lie -> lying)."""
    return verb[:-2] + "ying" if verb.endswith("ie") else _suffix_stem(verb) + "ing"


def _verb_forms(verb: str) -> set[str]:
    """Regular inflections of a base verb: base, -s, -ing, -ed."""
    stem = _suffix_stem(verb)
    if verb.endswith("e"):
        past = verb + "d"
    elif verb.endswith("y") and verb[-2] not in "aeiou":
        past = verb[:-1] + "ied"
    else:
        past = stem + "ed"
    return {verb, _third_person_verb(verb), present_participle(verb), past}


_VERB_LEMMAS = {form: verb for verb in _VERBS for form in _verb_forms(verb)} | _IRREGULAR_VERBS
_BASE_OF_THIRD_PERSON = {_third_person_verb(verb): verb for verb in _VERBS} | {"has": "have", "is": "be"}
_NOUN_CONTEXT = {"DET", "ADJ", "NUM"}
_SIDE_NOUNS = {"hand", "hands", "arm", "arms", "leg", "legs", "foot", "feet", "side", "shoulder", "knee", "elbow",
               "hip", "wrist", "ankle", "toe", "toes", "direction", "fist", "palm", "heel", "thigh"}


def _noun_lemma(word: str) -> str:
    """Singular of a plural noun by suffix rules."""
    irregular = {"feet": "foot", "people": "person", "men": "man", "women": "woman", "children": "child"}
    if word in irregular:
        return irregular[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def tag_tokens(caption: str) -> list[tuple[str, str]]:
    """(lemma, POS) pairs for a caption, HumanML3D-style (alphabetic tokens only, hyphens removed)."""
    text = re.sub(r"'[a-z]*", "", caption.lower().replace("-", ""))
    words = re.findall(r"[a-z]+", text)
    tagged: list[tuple[str, str]] = []
    for i, word in enumerate(words):
        prev_pos = tagged[-1][1] if tagged else ""
        if word in ("left", "right"):  # never lemmatised ("left" is no form of "leave" here)
            nxt = words[i + 1] if i + 1 < len(words) else ""
            tagged.append((word, "ADJ" if nxt in _SIDE_NOUNS else "NOUN"))
        elif word in _CLOSED_WORDS:
            tagged.append((word, _CLOSED_WORDS[word]))
        elif word in _VERB_LEMMAS and prev_pos not in _NOUN_CONTEXT and (prev_pos != "VERB" or word.endswith("ing")):
            tagged.append((_VERB_LEMMAS[word], "VERB"))
        elif word.endswith("ly") and len(word) > 4:
            tagged.append((word, "ADV"))
        elif word.endswith(("ing", "ed")) and len(word) > 5 and prev_pos not in _NOUN_CONTEXT:
            stem = word[:-3] if word.endswith("ing") else word[:-2]
            if len(stem) > 2 and stem[-1] == stem[-2]:
                stem = stem[:-1]
            tagged.append((stem, "VERB"))
        else:
            tagged.append((_noun_lemma(word), "NOUN"))
    return tagged


def clean_caption(text: str) -> str:
    """Lower-case, single-spaced caption without the '#' field separator; raises on empty text."""
    cleaned = " ".join(text.replace("#", " ").split()).lower()
    if not cleaned:
        raise ValueError(f"empty caption: {text!r}")
    return cleaned


def caption_line(caption: str, start: float = 0.0, end: float = 0.0) -> str:
    """HumanML3D text line `caption#word/POS ...#start#end` (0.0#0.0 = whole clip)."""
    caption = clean_caption(caption)
    tokens = " ".join(f"{word}/{pos}" for word, pos in tag_tokens(caption))
    return f"{caption}#{tokens}#{start:.1f}#{end:.1f}"


def progressive(phrase: str) -> str:
    """A third-person verb phrase in the progressive: 'walks and waves' -> 'walking and waving'.

    Converts the first word and every verb right after 'and', 'or', 'then' or a comma ('climbs, sits' -> 'climbing,
    sitting'); other words stay as they are.
    """
    words = phrase.split()
    for i, word in enumerate(words):
        bare = word.rstrip(",;")
        if (i == 0 or words[i - 1] in ("and", "or", "then") or words[i - 1].endswith(",")) \
                and bare in _BASE_OF_THIRD_PERSON:
            words[i] = present_participle(_BASE_OF_THIRD_PERSON[bare]) + word[len(bare):]
    return " ".join(words)


def third_person(phrase: str) -> str:
    """'walk on terrain' -> 'walks on terrain', 'run/jog' -> 'runs or jogs' (other words unchanged)."""
    words = phrase.replace("/", " or ").split()
    for i, word in enumerate(words):
        if word in _VERBS and (i == 0 or words[i - 1] == "or"):
            words[i] = _third_person_verb(word)
    return " ".join(words)


def is_verb_form(word: str) -> bool:
    """True when `word` is a known verb in any inflection (walk, walks, walking, walked, ran, ...)."""
    return word in _VERB_LEMMAS
