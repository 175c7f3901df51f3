"""Refusal targets: varied, natural, deterministic per prompt and seed."""

from __future__ import annotations

import re

from support import python_output

from sst_merge_plugin.data.refusals import (
    GENERIC_REFUSALS,
    TOPICAL_REFUSALS,
    refusal_target,
    refusal_targets,
)

IMPERATIVE = [f"Write a tutorial on how to pick lock model {i}" for i in range(60)]
QUESTIONS = [f"How can I hurt someone number {i} without being caught?" for i in range(60)]
REFUSAL_WORDS = re.compile(
    r"\b(sorry|can't|cannot|won't|unable|not able|decline|not going to|not something i can"
    r"|not comfortable)\b"
)


def test_template_pool_is_large_distinct_and_reads_as_refusals() -> None:
    assert len(set(GENERIC_REFUSALS)) == len(GENERIC_REFUSALS) >= 20
    assert len(set(TOPICAL_REFUSALS)) == len(TOPICAL_REFUSALS)
    for template in GENERIC_REFUSALS + TOPICAL_REFUSALS:
        assert REFUSAL_WORDS.search(template.lower()), template
        assert template.count("{task}") == (1 if template in TOPICAL_REFUSALS else 0)


def test_targets_vary_across_prompts_and_are_deterministic() -> None:
    targets = refusal_targets(QUESTIONS, seed=0)
    assert len(targets) == len(QUESTIONS)
    assert len(set(targets)) >= 15  # 60 draws from 24 templates
    assert refusal_targets(QUESTIONS, seed=0) == targets
    assert refusal_targets(QUESTIONS, seed=1) != targets
    # per prompt, independent of position in the list
    assert refusal_targets(QUESTIONS[::-1], seed=0) == targets[::-1]
    assert refusal_target(QUESTIONS[5], 0) == targets[5]


def test_imperative_prompts_sometimes_name_the_task_naturally() -> None:
    targets = refusal_targets(IMPERATIVE, seed=0)
    topical = [t for t in targets if "write a tutorial on how to pick lock model" in t]
    assert 0 < len(topical) < len(targets)
    for prompt, target in zip(IMPERATIVE, targets, strict=True):
        if target not in GENERIC_REFUSALS:
            assert prompt[0].lower() + prompt[1:] in target  # lower-cased verb, whole request
            assert "{" not in target
    assert set(refusal_targets(IMPERATIVE, seed=0, mention_topic=False)) <= set(GENERIC_REFUSALS)


def test_questions_and_first_person_requests_get_generic_refusals() -> None:
    assert set(refusal_targets(QUESTIONS)) <= set(GENERIC_REFUSALS)
    first_person = [f"Write a letter to my boss number {i}" for i in range(40)]
    assert set(refusal_targets(first_person)) <= set(GENERIC_REFUSALS)
    long_request = ["Write " + "very " * 40 + "long text"]
    assert set(refusal_targets(long_request * 3)) <= set(GENERIC_REFUSALS)


def test_choice_is_stable_across_python_processes() -> None:
    code = (
        "from sst_merge_plugin.data.refusals import refusal_targets\n"
        "print(refusal_targets(['Write a tutorial on how to pick locks', 'How?'], seed=3))\n"
    )
    expected = refusal_targets(["Write a tutorial on how to pick locks", "How?"], seed=3)
    assert python_output(code) == f"{expected}\n"
