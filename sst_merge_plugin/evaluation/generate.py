"""Batched greedy generation with the model's chat template.

Each prompt is encoded exactly as training encodes it, by
``encode_chat(tokenizer, prompt, None, system=system)`` (the chat-templated user turn plus the
generation prompt; the data layer's fallback format for tokenizers without a template).
Prompts are batched by token length (longest first, so batches hold similar lengths), LEFT-padded,
and passed with an attention mask; the model decodes greedily (``do_sample=False``) up to
``max_new_tokens``. A response ends at the first stop token: the tokenizer's EOS, the model's
generation-config EOS ids, and the end-of-turn markers of common chat templates
(:data:`END_OF_TURN_TOKENS`) that exist in the vocabulary. The stop token and what follows are
dropped, the rest is decoded without special tokens and stripped. Responses come back in the
order of ``prompts``. Padding does not change results: batched and one-by-one outputs agree.
:func:`generate_turns` also says whether each response ended with a stop token (``finished``)
or was cut at ``max_new_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.chat import encode_chat, pad_batch

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

UNLIMITED = 1 << 30  # prompts are never truncated
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a response (EOS of tokenizer and model, known end-of-turn tokens)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(int(i) for i in (configured if isinstance(configured, list) else [configured]))
    vocabulary = tokenizer.get_vocab()
    ids.update(vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary)
    if not ids:
        raise SSTError("the tokenizer has no EOS or end-of-turn token: generation cannot stop")
    return sorted(ids)


def model_device(model: PreTrainedModel) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


class Turn(NamedTuple):
    """A generated response and whether it ended with a stop token (else it was cut at
    ``max_new_tokens``)."""

    text: str
    finished: bool


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device | str | None = None,
    system: str | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy responses to ``prompts`` (contract in the module docstring).

    ``device`` defaults to the model's; ``system`` is an optional system message; ``progress``
    shows a tqdm bar over batches labelled ``desc``. Ctrl-C interrupts between (and within)
    batches.
    """
    turns = generate_turns(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        system=system,
        progress=progress,
        desc=desc,
    )
    return [turn.text for turn in turns]


def generate_turns(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device | str | None = None,
    system: str | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[Turn]:
    """:func:`generate_responses` with each response's ``finished`` flag (:class:`Turn`)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise SSTError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise SSTError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    device = torch.device(device) if device is not None else model_device(model)
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=pad_id,
    )
    encoded = [
        encode_chat(tokenizer, prompt, None, max_length=UNLIMITED, system=system).input_ids
        for prompt in prompts
    ]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    responses: list[Turn] = [Turn("", False)] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        batches = range(0, len(order), batch_size)
        bar = tqdm(
            batches,
            total=math.ceil(len(order) / batch_size),
            desc=desc,
            unit="batch",
            disable=not progress,
        )
        for start in bar:
            indices = order[start : start + batch_size]
            input_ids, attention_mask = pad_batch([encoded[i] for i in indices], pad_id, "left")
            width = input_ids.shape[1]
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
            for row, i in enumerate(indices):
                new_tokens = output[row, width:].tolist()
                end = next((k for k, t in enumerate(new_tokens) if t in stops), len(new_tokens))
                text = tokenizer.decode(new_tokens[:end], skip_special_tokens=True)
                responses[i] = Turn(text.strip(), end < len(new_tokens))
    finally:
        model.train(was_training)
    return responses
