"""Programmatic utility skills: answers against independent solvers, split determinism and
disjointness, the exact-match rule, and JSONL task files."""

from __future__ import annotations

import json
import re

import pytest

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.tasks import (
    SKILLS,
    TaskItem,
    exact_match,
    load_task_file,
    normalize_answer,
    skill_splits,
)

_FACTORS = {
    ("kilometers", "meters"): 1000,
    ("kilograms", "grams"): 1000,
    ("hours", "minutes"): 60,
    ("meters", "centimeters"): 100,
    ("minutes", "seconds"): 60,
}


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _after_colon(prompt: str) -> str:
    return prompt.split(":", 1)[1].strip().rstrip("?")


def solve(skill: str, prompt: str) -> tuple[tuple, str]:
    """(canonical problem, answer) parsed from the prompt text alone, independent of tasks.py."""
    if skill in ("addition", "multiplication"):
        a, b = _numbers(prompt)
        return (a, b), str(a + b if skill == "addition" else a * b)
    if skill == "subtraction":
        x, y = _numbers(prompt)
        a, b = (y, x) if prompt.startswith("Subtract") else (x, y)
        return (a, b), str(a - b)
    if skill == "unit_conversion":
        (value,) = _numbers(prompt)
        words = re.findall(r"[a-z]+", prompt.lower())
        units = [w for w in words if any(w in pair for pair in _FACTORS)]
        source, target = (units[1], units[0]) if prompt.startswith("How many") else units
        return (value, source, target), str(value * _FACTORS[(source, target)])
    if skill == "max_number":
        numbers = _numbers(_after_colon(prompt))
        return tuple(numbers), str(max(numbers))
    if skill == "python_eval":
        # Python itself evaluates the expression shown after the question
        expression = re.split(r"\? |: ", prompt, maxsplit=1)[1]
        allowed = {"len": len, "sum": sum, "max": max, "min": min}
        return (expression,), str(eval(expression, {"__builtins__": allowed}))
    if skill == "count_word":
        target = re.search(r'"(\w+)"', prompt).group(1)
        words = _after_colon(prompt).split()
        return (target, *words), str(words.count(target))
    shown = _after_colon(prompt)
    answers = {
        "reverse_letters": lambda: " ".join(shown.split()[::-1]),
        "sort_digits": lambda: " ".join(sorted(shown.split())),
        "uppercase": shown.upper,
        "acronym": lambda: "".join(word[0] for word in shown.split()).upper(),
        "last_word": lambda: shown.split()[-1],
        "lowercase": shown.lower,
    }
    return (shown,), answers[skill]()


def test_registry_has_at_least_eight_described_skills():
    assert len(SKILLS) >= 8
    for name, skill in SKILLS.items():
        assert skill.name == name and len(skill.description) > 10


@pytest.mark.parametrize("skill", sorted(SKILLS))
def test_answers_match_an_independent_solver_and_splits_never_overlap(skill):
    train, test = skill_splits(skill, 300, 60, seed=0)
    assert len(train) == 300 and len(test) == 60
    for item in train + test:
        assert item.answer == solve(skill, item.prompt)[1], item
        assert exact_match(item.answer, item.answer)
    train_problems = {solve(skill, item.prompt)[0] for item in train}
    test_problems = {solve(skill, item.prompt)[0] for item in test}
    assert len(train_problems) == 300 and len(test_problems) == 60  # distinct problems
    assert not train_problems & test_problems
    # another seed draws other problems, but never a test problem into train
    other_train, other_test = skill_splits(skill, 300, 60, seed=1)
    assert {solve(skill, item.prompt)[0] for item in other_train}.isdisjoint(test_problems)
    assert {solve(skill, item.prompt)[0] for item in other_test}.isdisjoint(train_problems)
    assert other_train != train


def test_splits_are_deterministic_and_prompts_are_short():
    for skill in SKILLS:
        first = skill_splits(skill, 20, 10, seed=7)
        assert first == skill_splits(skill, 20, 10, seed=7)
        for item in first[0] + first[1]:
            assert len(item.prompt) < 100 and 0 < len(item.answer) < 30


def test_split_errors():
    with pytest.raises(SSTError, match="unknown skill 'nope'"):
        skill_splits("nope", 1, 1)
    with pytest.raises(SSTError, match=">= 0"):
        skill_splits("addition", -1, 1)
    # unit_conversion has 5 conversions x 199 values = 995 problems, about 100 in the test pool
    with pytest.raises(SSTError, match="yielded only"):
        skill_splits("unit_conversion", 0, 500)


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("405", "405", True),
        ("405.", "405", True),
        ("The answer is 405", "405", True),
        ("347 + 58 = 405", "405", True),
        ("**405**", "405", True),
        ("7,000", "7000", True),
        ("There are 7000 meters in 7 kilometers.", "7000", False),  # last number rule
        ("405 or 406", "405", False),
        ("\n\n405\nbecause 300 + 105", "405", True),  # only the first non-empty line counts
        ("4050", "405", False),
        ("", "405", False),
        ("347-58=289", "289", True),
        ("-5", "-5", True),
        ("HELLO WORLD", "HELLO WORLD", True),
        ("  HELLO   WORLD. ", "HELLO WORLD", True),
        ("hello world", "HELLO WORLD", False),  # case is part of the answer
        ("Reversed: d p m k", "d p m k", True),
        ("d, p, m, k", "d p m k", True),
        ("dpmk", "d p m k", False),
        ("d p m k x", "d p m k", False),
    ],
)
def test_exact_match_rule(response, answer, expected):
    assert exact_match(response, answer) is expected


def test_normalize_answer_documented_steps():
    assert normalize_answer('  "`HELLO`,  world!"  \nnext') == "HELLO world"
    assert normalize_answer("1,234,567 apples.") == "1234567 apples"


def test_load_task_file_roundtrip_and_errors(tmp_path):
    good = tmp_path / "tasks.jsonl"
    good.write_text(
        json.dumps({"prompt": "What is 2 + 2?", "answer": 4})
        + "\n\n"
        + json.dumps({"prompt": "Say hi", "answer": "hi", "extra": 1})
        + "\n",
        encoding="utf-8",
    )
    assert load_task_file(good) == [TaskItem("What is 2 + 2?", "4"), TaskItem("Say hi", "hi")]

    cases = {
        "bad.jsonl": ('{"prompt": "x", "answer": "y"}\n{oops\n', r"bad\.jsonl:2: invalid JSON"),
        "missing.jsonl": ('{"prompt": "x"}\n', r"missing\.jsonl:1: field 'answer'"),
        "empty_field.jsonl": ('{"prompt": " ", "answer": "y"}\n', "field 'prompt'"),
        "list.jsonl": ('["x", "y"]\n', "expected a JSON object"),
        "empty.jsonl": ("\n\n", "contains no items"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        with pytest.raises(SSTError, match=message):
            load_task_file(path)
    with pytest.raises(SSTError, match="does not exist"):
        load_task_file(tmp_path / "absent.jsonl")
