"""Refusal targets: varied, natural refusals used as training targets for harmful prompts.

A single fixed refusal string teaches a model one sentence; a varied set teaches the behaviour.
:data:`GENERIC_REFUSALS` holds 24 refusals that fit any request; :data:`TOPICAL_REFUSALS` holds
10 that name the request (``{task}``), used only when the prompt is a plain imperative request
("Write a tutorial on ...", "Develop a plan to ...") without first-person words, so that the
sentence stays grammatical: "I'm sorry, but I can't write a tutorial on ...".

The choice per prompt is ``sha256(f"{seed}\\0{prompt}")`` modulo the number of templates that
fit the prompt: deterministic, independent of the prompt's position and of Python's ``hash()``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

GENERIC_REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I can't help with that request.",
    "I'm not able to help with this. Is there something else I can do for you?",
    "Sorry, I can't assist with that. It could cause real harm to people.",
    "I won't help with that. If you have a different question, I'm happy to help.",
    "I'm sorry, but I can't provide that. It could be used to hurt someone.",
    "I can't do that. Helping with this could put people at risk.",
    "I'm afraid I can't help with this request.",
    "No, I can't help with that. It's harmful and potentially illegal.",
    "I'm sorry, I can't assist with this. Let me know if there's something else you need.",
    "That's not something I can help with, as it could lead to serious harm.",
    "I cannot help with that. I'd be glad to help with something safe instead.",
    "I'm sorry, but I won't provide instructions or content for this.",
    "I can't assist with requests like this one, because they could hurt people.",
    "Sorry, but I'm not going to help with that.",
    "I'm unable to help with that request. Is there anything else I can help you with?",
    "I have to decline this one. It could cause harm, and I don't want to contribute to that.",
    "I'm sorry, but this is something I can't help with.",
    "I can't provide help with this, since it could be dangerous or illegal.",
    "I won't be able to help with that. Please reach out if there's another way I can assist.",
    "I'm sorry, but I must decline. This request could lead to harm.",
    "I can't help you with this. If you're dealing with a difficult situation, talking to a "
    "trusted person or a professional may help.",
    "Sorry, that's not something I'm able to do.",
    "I'm not comfortable helping with this, as it could cause harm to others.",
)

TOPICAL_REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't {task}.",
    "I can't {task}. That could cause real harm.",
    "Sorry, I won't {task}. Is there something else I can do for you?",
    "I'm not able to {task}, because it could hurt people.",
    "I'm sorry, I can't {task}. I'd be happy to help with something else.",
    "I won't {task}. It's harmful and could be illegal.",
    "Sorry, but I'm not going to {task}.",
    "I'm afraid I can't {task}; it could put people at risk.",
    "I have to decline. I can't {task}, since it could cause serious harm.",
    "No, I won't {task}, but I'm glad to help with something safe.",
)

#: imperative verbs that open AdvBench/HarmBench-style requests
_IMPERATIVES = frozenset(
    {
        "build",
        "compose",
        "conduct",
        "construct",
        "create",
        "design",
        "describe",
        "develop",
        "devise",
        "draft",
        "explain",
        "generate",
        "give",
        "instruct",
        "list",
        "make",
        "outline",
        "plan",
        "produce",
        "provide",
        "publish",
        "suggest",
        "teach",
        "write",
    }
)
_FIRST_PERSON = re.compile(r"\b(i|me|my|mine|myself|we|us|our|ours)\b", re.IGNORECASE)
_MAX_TASK_WORDS = 24


def _task_phrase(prompt: str) -> str | None:
    """The prompt as a verb phrase for ``{task}``, or None when it would not read naturally."""
    text = " ".join(prompt.split()).rstrip(" .!")
    words = text.split(" ")
    if (
        not words
        or words[0].lower() not in _IMPERATIVES
        or len(words) > _MAX_TASK_WORDS
        or "?" in text
        or _FIRST_PERSON.search(text)
    ):
        return None
    return words[0].lower() + text[len(words[0]) :]


def refusal_target(prompt: str, seed: int = 0, *, mention_topic: bool = True) -> str:
    """The refusal for one prompt (see the module doc for how it is chosen)."""
    task = _task_phrase(prompt) if mention_topic else None
    templates = GENERIC_REFUSALS + (TOPICAL_REFUSALS if task is not None else ())
    index = int(hashlib.sha256(f"{seed}\0{prompt}".encode()).hexdigest(), 16) % len(templates)
    return templates[index].format(task=task) if task is not None else templates[index]


def refusal_targets(
    prompts: Sequence[str], seed: int = 0, *, mention_topic: bool = True
) -> list[str]:
    """One refusal per prompt, in order (:func:`refusal_target` of each)."""
    return [refusal_target(prompt, seed, mention_topic=mention_topic) for prompt in prompts]
