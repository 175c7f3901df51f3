"""The three collection objectives: which sequences the Fisher is taken on, and their labels.

* ``refusal`` — empirical Fisher of refusing harmful prompts: each prompt is paired with a
  refusal target (:func:`sst_merge_plugin.data.refusals.refusal_targets`, seeded; or given
  with the prompt — ``completions`` — e.g. the model's own refusals) and the loss is the
  log-likelihood of the target's tokens (the response), not of the prompt.
* ``kl`` — TRUE Fisher of the model's own distribution on benign prompts: the labels are
  responses sampled from the model (:mod:`.sampling`, seeded), so the outer products average
  over exact samples ``y ~ p_θ(·|x)`` (``docs/design.md`` §2.4: the Hessian of the KL to the unpatched model).
* ``lm`` — empirical Fisher on given completions: ``(prompt, response)`` pairs from a JSONL,
  JSON or CSV file (:func:`load_completions`, read by
  :func:`sst_merge_plugin.data.records.read_records`); loss on the response tokens.

Every turn is chat-templated by :func:`sst_merge_plugin.data.chat.encode_chat`.
``data_sha256`` (the Fisher file's) is :func:`sst_merge_plugin.data.prompts.prompts_sha256` of
the prompts used for ``refusal`` (seeded targets) and ``kl``, and :func:`completions_sha256` for
``lm`` and ``refusal`` with given targets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.chat import EncodedChat, encode_chat
from sst_merge_plugin.data.prompts import prompts_sha256
from sst_merge_plugin.data.records import RECORD_FORMATS, read_records
from sst_merge_plugin.fisher import Objective

if TYPE_CHECKING:
    from torch import nn


def check_objective(objective: str) -> None:
    """Raise :class:`SSTError` for an unknown objective name."""
    if objective not in Objective.values():
        raise SSTError(
            f"unknown objective {objective!r}; expected one of {', '.join(Objective.values())}"
        )


def completions_sha256(completions: Sequence[tuple[str, str]]) -> str:
    """sha256 of the compact UTF-8 JSON array of ``[prompt, response]`` pairs, in order."""
    payload = json.dumps(
        [list(pair) for pair in completions], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_completions(
    path: str | os.PathLike[str], prompt_field: str = "prompt", response_field: str = "response"
) -> list[tuple[str, str]]:
    """``(prompt, response)`` pairs of a ``.jsonl``/``.json``/``.csv`` file, in file order.

    Every record must have non-empty string fields ``prompt_field`` and ``response_field``.
    Prompts are stripped; responses are kept verbatim (their whitespace is data).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise SSTError(f"completions file {str(file)!r} does not exist")
    if file.suffix.lower() not in RECORD_FORMATS:
        raise SSTError(
            f"{file}: the lm objective reads (prompt, response) records from "
            f"{', '.join(RECORD_FORMATS)} files, not {file.suffix!r}"
        )
    completions = []
    for where, record in read_records(file, what="completions"):
        if not isinstance(record, dict):
            raise SSTError(
                f"{where}: expected an object with fields {prompt_field!r}, "
                f"{response_field!r}, got {type(record).__name__}"
            )
        values = [record.get(field) for field in (prompt_field, response_field)]
        for field, value in zip((prompt_field, response_field), values, strict=True):
            if not isinstance(value, str) or not value.strip():
                raise SSTError(
                    f"{where}: field {field!r} must be a non-empty string, got {value!r} "
                    f"(fields present: {', '.join(map(str, record))})"
                )
        completions.append((values[0].strip(), values[1]))
    if not completions:
        raise SSTError(f"{file}: contains no completions")
    return completions


def refusal_completions(prompts: Sequence[str], seed: int) -> list[tuple[str, str]]:
    """Each harmful prompt paired with its seeded refusal target."""
    from sst_merge_plugin.data.refusals import refusal_targets

    return list(zip(prompts, refusal_targets(list(prompts), seed), strict=True))


@dataclass(frozen=True)
class PreparedData:
    """The tokenized examples of one objective, ready before any model is loaded.

    For ``refusal`` and ``lm`` the examples are complete. For ``kl`` they hold the prompts only
    (``response_start == len(input_ids)``), encoded with room for ``response_tokens`` within
    ``max_length``; :func:`with_sampled_responses` appends the model's samples.
    """

    objective: str
    examples: list[EncodedChat]
    data_sha256: str
    seed: int
    max_length: int
    response_tokens: int | None = None


def prepare_data(
    tokenizer: Any,
    *,
    objective: str,
    prompts: Sequence[str] | None = None,
    completions: Sequence[tuple[str, str]] | None = None,
    seed: int = 0,
    max_length: int = 512,
    response_tokens: int = 64,
) -> PreparedData:
    """Chat-encode the data of ``objective`` (module doc); :class:`SSTError` on bad input.

    ``prompts`` feed ``refusal`` and ``kl``, ``completions`` feed ``lm`` and ``refusal`` with
    given targets (``(prompt, refusal)`` pairs); ``seed`` picks the seeded refusal targets (and
    is kept for the ``kl`` sampling).
    """
    check_objective(objective)
    if objective == "lm" or (objective == "refusal" and completions is not None):
        if prompts is not None or not completions:
            raise SSTError(
                f"the {objective} objective needs a non-empty list of (prompt, response) pairs"
            )
        return PreparedData(
            objective,
            encode_completions(tokenizer, completions, max_length=max_length),
            completions_sha256(completions),
            seed,
            max_length,
        )
    if completions is not None or not prompts:
        raise SSTError(f"the {objective} objective needs a non-empty list of prompts")
    digest = prompts_sha256(prompts)
    if objective == "refusal":
        examples = encode_completions(
            tokenizer, refusal_completions(prompts, seed), max_length=max_length
        )
        return PreparedData(objective, examples, digest, seed, max_length)
    if response_tokens < 1 or max_length - response_tokens < 1:
        raise SSTError(
            f"--response-tokens must be in [1, max_length - 1]; got {response_tokens} with "
            f"max_length {max_length}"
        )
    encoded = [
        encode_chat(tokenizer, prompt, None, max_length=max_length - response_tokens)
        for prompt in prompts
    ]
    return PreparedData(objective, encoded, digest, seed, max_length, response_tokens)


def encode_completions(
    tokenizer: Any, completions: Sequence[tuple[str, str]], *, max_length: int
) -> list[EncodedChat]:
    """Chat-encode ``(prompt, response)`` pairs; the response tokens carry the loss."""
    return [
        encode_chat(tokenizer, prompt, response, max_length=max_length)
        for prompt, response in completions
    ]


def with_sampled_responses(
    data: PreparedData,
    model: nn.Module,
    tokenizer: Any,
    *,
    batch_size: int,
    pad_id: int,
    progress: bool = False,
) -> list[EncodedChat]:
    """The complete examples of ``data``: for ``kl``, each prompt + a response sampled from
    ``model`` (:func:`~.sampling.sample_responses`, ``data.seed``); otherwise ``data.examples``.
    """
    if data.objective != "kl":
        return list(data.examples)
    from sst_merge_plugin.fisher.sampling import eos_token_ids, sample_responses

    assert data.response_tokens is not None
    responses = sample_responses(
        model,
        [item.input_ids for item in data.examples],
        n_tokens=data.response_tokens,
        seed=data.seed,
        pad_id=pad_id,
        eos_ids=eos_token_ids(model, tokenizer),
        batch_size=batch_size,
        progress=progress,
    )
    return [
        EncodedChat(item.input_ids + response, len(item.input_ids))
        for item, response in zip(data.examples, responses, strict=True)
    ]
