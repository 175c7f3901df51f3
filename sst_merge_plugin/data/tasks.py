"""Programmatic utility skills with exact answers, their train/test splits, and answer scoring.

A *skill* is a generator of short instruction prompts with one correct short answer (2-3 digit
arithmetic, unit conversion, letter and word transforms, the value of a one-line Python
expression — the code-flavoured skill for coder models). They are small enough for a 135M model
to learn with a LoRA adapter on CPU in minutes, and they are scored by exact match, so utility can
be measured without a judge model.

Splits. Every generated item has a canonical *problem key* (e.g. ``"347+58"``), independent of the
prompt wording. With ``b = sha256("<skill>|<key>") mod 1000``, a problem belongs to the test pool
iff ``b < TEST_PERMILLE``, to the validation pool iff ``TEST_PERMILLE ≤ b < HELD_OUT_PERMILLE``,
and to the train pool otherwise (:func:`problem_pool`). The pools never share a problem for any
seed or size, and a held-out problem is never seen in training under another phrasing. The seed
only changes which problems are drawn and how they are worded.

Scoring (:func:`exact_match`). Only the first non-empty line of a response counts. It is normalised
by :func:`normalize_answer` (markdown ``*``/backticks removed, thousands separators ``7,000`` →
``7000``, remaining commas read as spaces, whitespace collapsed, the characters ``.!?;:"'`` stripped
at both ends). Case is kept: case is part of the uppercase and acronym answers.

* numeric answer (an integer): correct iff the LAST number on that line equals it
  (``"405"``, ``"347 + 58 = 405."``, ``"The answer is 405"`` are correct; ``"405 or 406"`` is not).
* text answer: correct iff the normalised line equals the normalised answer, or the part after
  the line's last colon does (``"Reversed: d p m k"``).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sst_merge_plugin.choice import Choice
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.records import read_records


class Pool(Choice):
    """The disjoint problem pools of a skill (module doc)."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


# Fractions (per mille) of each skill's problem space held out: [0, TEST_PERMILLE) is the test
# pool, [TEST_PERMILLE, HELD_OUT_PERMILLE) the validation pool, the rest trains.
TEST_PERMILLE = 100
HELD_OUT_PERMILLE = 200
# skill_splits gives up after this many consecutive draws that add no new problem.
MAX_USELESS_DRAWS = 10_000


@dataclass(frozen=True)
class TaskItem:
    """One instruction ``prompt`` and its exact ``answer`` (what a trained model should reply)."""

    prompt: str
    answer: str


# A problem generator draws one problem and returns (canonical problem key, item).
ProblemGenerator = Callable[[random.Random], tuple[str, TaskItem]]


@dataclass(frozen=True)
class Skill:
    """A named skill: ``make(rng) -> (problem key, TaskItem)`` and a one-line description."""

    name: str
    description: str
    make: ProblemGenerator


_WORDS = (  # noqa: SIM905 (a word list reads best as text)
    "apple river moon green house table water light stone paper music dream cloud happy "
    "window garden silver forest bread candle ocean little winter summer yellow orange tiger "
    "rabbit planet basket pencil mirror bottle castle dragon flower rocket shadow spring "
    "butter coffee doctor engine farmer guitar island jacket kitten ladder marble needle "
    "pepper queen ribbon saddle turtle violin wagon yogurt zebra anchor bridge circle desert"
).split()
_COUNT_WORDS = ("cat", "dog", "bird", "fish")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# (source unit, target unit, factor)
_CONVERSIONS = (
    ("kilometers", "meters", 1000),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("meters", "centimeters", 100),
    ("minutes", "seconds", 60),
)


def _addition(rng: random.Random) -> tuple[str, TaskItem]:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    template = rng.choice(("What is {a} + {b}?", "Add {a} and {b}."))
    return f"{a}+{b}", TaskItem(template.format(a=a, b=b), str(a + b))


def _subtraction(rng: random.Random) -> tuple[str, TaskItem]:
    a = rng.randint(20, 999)
    b = rng.randint(10, a - 1)
    template = rng.choice(("What is {a} - {b}?", "Subtract {b} from {a}."))
    return f"{a}-{b}", TaskItem(template.format(a=a, b=b), str(a - b))


def _multiplication(rng: random.Random) -> tuple[str, TaskItem]:
    a, b = rng.randint(10, 999), rng.randint(2, 9)
    template = rng.choice(("What is {a} times {b}?", "Multiply {a} by {b}."))
    return f"{a}*{b}", TaskItem(template.format(a=a, b=b), str(a * b))


def _unit_conversion(rng: random.Random) -> tuple[str, TaskItem]:
    source, target, factor = rng.choice(_CONVERSIONS)
    value = rng.randint(1, 199)
    template = rng.choice(
        ("How many {target} are in {value} {source}?", "Convert {value} {source} to {target}.")
    )
    prompt = template.format(target=target, value=value, source=source)
    return f"{value} {source}->{target}", TaskItem(prompt, str(value * factor))


def _reverse_letters(rng: random.Random) -> tuple[str, TaskItem]:
    letters = [rng.choice(_LETTERS) for _ in range(rng.randint(3, 6))]
    template = rng.choice(
        ("Write these letters in reverse order: {s}", "Reverse the order of these letters: {s}")
    )
    shown = " ".join(letters)
    return shown, TaskItem(template.format(s=shown), " ".join(reversed(letters)))


def _sort_digits(rng: random.Random) -> tuple[str, TaskItem]:
    digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(4, 6))]
    template = rng.choice(
        (
            "Sort these digits from smallest to largest: {s}",
            "Put these digits in ascending order: {s}",
        )
    )
    shown = " ".join(digits)
    return shown, TaskItem(template.format(s=shown), " ".join(sorted(digits)))


def _uppercase(rng: random.Random) -> tuple[str, TaskItem]:
    words = " ".join(rng.sample(_WORDS, rng.randint(2, 3)))
    template = rng.choice(("Rewrite in uppercase: {s}", "Convert to capital letters: {s}"))
    return words, TaskItem(template.format(s=words), words.upper())


def _count_word(rng: random.Random) -> tuple[str, TaskItem]:
    target = rng.choice(_COUNT_WORDS)
    sequence = " ".join(rng.choice(_COUNT_WORDS) for _ in range(rng.randint(4, 8)))
    template = rng.choice(
        (
            'How many times does the word "{t}" appear in: {s}',
            'Count how often "{t}" occurs in: {s}',
        )
    )
    answer = str(sequence.split().count(target))
    return f"{target}|{sequence}", TaskItem(template.format(t=target, s=sequence), answer)


def _max_number(rng: random.Random) -> tuple[str, TaskItem]:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    shown = ", ".join(map(str, numbers))
    template = rng.choice(
        ("Which number is the largest: {s}?", "What is the biggest of these numbers: {s}?")
    )
    return shown, TaskItem(template.format(s=shown), str(max(numbers)))


def _acronym(rng: random.Random) -> tuple[str, TaskItem]:
    words = rng.sample(_WORDS, rng.randint(3, 4))
    shown = " ".join(words)
    template = rng.choice(
        ("Make an acronym from the first letters of: {s}", "Write the initials of these words: {s}")
    )
    return shown, TaskItem(template.format(s=shown), "".join(w[0] for w in words).upper())


def _last_word(rng: random.Random) -> tuple[str, TaskItem]:
    words = rng.sample(_WORDS, rng.randint(3, 5))
    shown = " ".join(words)
    template = rng.choice(
        ("What is the last word in this list: {s}", "Write only the final word of: {s}")
    )
    return shown, TaskItem(template.format(s=shown), words[-1])


def _lowercase(rng: random.Random) -> tuple[str, TaskItem]:
    words = " ".join(rng.sample(_WORDS, rng.randint(2, 3))).upper()
    template = rng.choice(("Rewrite in lowercase: {s}", "Convert to small letters: {s}"))
    return words, TaskItem(template.format(s=words), words.lower())


def _python_expression(rng: random.Random) -> tuple[str, int]:
    """One integer-valued Python expression (source text) and its value, as Python computes
    it: ``len`` of a string, ``sum``/``max``/``min`` of a list, ``//`` and ``%``, list
    indexing (negative indices too), ``str.count``, a filtered comprehension's ``len``, or
    ``a + b * c`` (precedence)."""
    numbers = [rng.randint(1, 20) for _ in range(rng.randint(3, 5))]
    shown = "[" + ", ".join(map(str, numbers)) + "]"
    form = rng.randrange(9)
    if form == 0:
        word = rng.choice(_WORDS)
        return f'len("{word}")', len(word)
    if form == 1:
        return f"sum({shown})", sum(numbers)
    if form == 2:
        return f"max({shown})", max(numbers)
    if form == 3:
        return f"min({shown})", min(numbers)
    if form in (4, 5):
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return (f"{a} // {b}", a // b) if form == 4 else (f"{a} % {b}", a % b)
    if form == 6:
        index = rng.randint(-len(numbers), len(numbers) - 1)
        return f"{shown}[{index}]", numbers[index]
    if form == 7:
        word, letter = rng.choice(_WORDS), rng.choice("aeinorst")
        return f'"{word}".count("{letter}")', word.count(letter)
    a, b, c = rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 9)
    if rng.random() < 0.5:
        return f"{a} + {b} * {c}", a + b * c
    threshold = rng.randint(3, 15)
    return f"len([x for x in {shown} if x > {threshold}])", sum(x > threshold for x in numbers)


def _python_eval(rng: random.Random) -> tuple[str, TaskItem]:
    expression, value = _python_expression(rng)
    template = rng.choice(
        (
            "What does this Python expression evaluate to? {e}",
            "Evaluate in Python: {e}",
        )
    )
    return expression, TaskItem(template.format(e=expression), str(value))


SKILLS: dict[str, Skill] = {
    skill.name: skill
    for skill in (
        Skill("addition", "add two numbers with 2-3 digits", _addition),
        Skill("subtraction", "subtract a smaller 2-3 digit number from a larger one", _subtraction),
        Skill("multiplication", "multiply a 2-3 digit number by a digit 2-9", _multiplication),
        Skill("unit_conversion", "convert km→m, kg→g, h→min, m→cm, min→s", _unit_conversion),
        Skill("reverse_letters", "write 3-6 space-separated letters backwards", _reverse_letters),
        Skill("sort_digits", "sort 4-6 space-separated digits ascending", _sort_digits),
        Skill("uppercase", "rewrite 2-3 lowercase words in capitals", _uppercase),
        Skill("count_word", "count one word's occurrences in a 4-8 word list", _count_word),
        Skill("max_number", "pick the largest of 3-5 numbers below 100", _max_number),
        Skill("acronym", "capital initials of 3-4 words", _acronym),
        Skill("last_word", "the last of 3-5 space-separated words", _last_word),
        Skill("lowercase", "rewrite 2-3 uppercase words in small letters", _lowercase),
        Skill(
            "python_eval",
            "the integer value of a one-line Python expression (len, sum, max/min, //, %, "
            "indexing, str.count, a filtered comprehension, precedence)",
            _python_eval,
        ),
    )
}


def get_skill(name: str) -> Skill:
    """The registered skill ``name``; :class:`SSTError` listing the known names otherwise."""
    try:
        return SKILLS[name]
    except KeyError:
        raise SSTError(f"unknown skill {name!r}; known skills: {', '.join(SKILLS)}") from None


def problem_pool(skill: str, key: str) -> Pool:
    """The pool of problem ``key`` of ``skill`` (its sha256 bucket, see the module doc)."""
    digest = hashlib.sha256(f"{skill}|{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 1000
    if bucket < TEST_PERMILLE:
        return Pool.TEST
    return Pool.VALIDATION if bucket < HELD_OUT_PERMILLE else Pool.TRAIN


def draw_items(skill: str, sizes: Mapping[Pool, int], seed: int = 0) -> dict[Pool, list[TaskItem]]:
    """``sizes[pool]`` items from each named pool of ``skill``, deterministic in ``seed``.

    One seeded generator draws problems and files each into its pool until every requested pool
    is full; problems are distinct within a pool and pools never share one. Raises
    :class:`SSTError` for negative sizes, or when :data:`MAX_USELESS_DRAWS` draws in a row add
    nothing new (the skill's problem space cannot supply that many distinct problems).
    """
    generator = get_skill(skill).make
    if any(n < 0 for n in sizes.values()):
        raise SSTError(f"split sizes must be >= 0, got {dict(sizes)}")
    rng = random.Random(f"sst-merge/{skill}/{seed}")
    found: dict[Pool, dict[str, TaskItem]] = {pool: {} for pool in sizes}
    useless_draws = 0
    while (
        any(len(found[pool]) < n for pool, n in sizes.items()) and useless_draws < MAX_USELESS_DRAWS
    ):
        key, item = generator(rng)
        pool = problem_pool(skill, key)
        if pool in found and len(found[pool]) < sizes[pool] and key not in found[pool]:
            found[pool][key] = item
            useless_draws = 0
        else:
            useless_draws += 1
    if any(len(found[pool]) < n for pool, n in sizes.items()):
        got = " / ".join(f"{len(found[pool])} {pool}" for pool in sizes)
        asked = " / ".join(str(n) for n in sizes.values())
        raise SSTError(
            f"skill {skill!r} yielded only {got} distinct problems (asked for {asked}); "
            "ask for fewer items"
        )
    return {pool: list(items.values()) for pool, items in found.items()}


def skill_splits(
    skill: str, n_train: int, n_test: int, seed: int = 0
) -> tuple[list[TaskItem], list[TaskItem]]:
    """``n_train`` train and ``n_test`` test items of ``skill`` (:func:`draw_items`)."""
    drawn = draw_items(skill, {Pool.TRAIN: n_train, Pool.TEST: n_test}, seed)
    return drawn[Pool.TRAIN], drawn[Pool.TEST]


def load_task_file(path: str | os.PathLike[str]) -> list[TaskItem]:
    """Read a JSONL file of ``{"prompt": str, "answer": str|int}`` objects (blank lines skipped).

    Raises :class:`SSTError` naming the file and line for a missing file, invalid JSON, a missing
    or empty field, or a file without items. Integer answers are converted to strings.
    """
    file = Path(path)
    if not file.is_file():
        raise SSTError(f"utility task file {str(file)!r} does not exist")
    items = []
    for where, record in read_records(file, ".jsonl"):
        if not isinstance(record, dict):
            raise SSTError(f"{where}: expected a JSON object with 'prompt' and 'answer'")
        fields = {}
        for field in ("prompt", "answer"):
            value = record.get(field)
            if (
                isinstance(value, bool)
                or not isinstance(value, str | int)
                or not str(value).strip()
            ):
                raise SSTError(f"{where}: field {field!r} must be a non-empty string")
            fields[field] = str(value).strip()
        items.append(TaskItem(**fields))
    if not items:
        raise SSTError(f"utility task file {str(file)!r} contains no items")
    return items


_INTEGER = re.compile(r"(?<!\d)-?\d+")  # a "-" right after a digit is a minus sign
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_EDGE_PUNCTUATION = ".!?;:\"' "


def normalize_answer(text: str) -> str:
    """The normalised first non-empty line of ``text`` (rule in the module docstring)."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = line.replace("*", "").replace("`", "")
    line = _THOUSANDS.sub("", line).replace(",", " ")
    return " ".join(line.split()).strip(_EDGE_PUNCTUATION)


def exact_match(response: str, answer: str) -> bool:
    """Whether ``response`` gives ``answer`` (numeric: last number of the first line; text: whole
    first line or its part after the last colon; both normalised, see the module docstring)."""
    line = normalize_answer(response)
    expected = normalize_answer(answer)
    if _INTEGER.fullmatch(expected):
        numbers = _INTEGER.findall(line)
        return bool(numbers) and int(numbers[-1]) == int(expected)
    after_colon = line.rsplit(":", 1)[-1].strip(_EDGE_PUNCTUATION)
    return expected in (line, after_colon)
