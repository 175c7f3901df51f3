"""Chat templating for training and scoring: one (prompt, response) turn as token ids and labels.

Conversation format. With a chat template (``tokenizer.chat_template``) the turn is rendered by
the template: ``[system?, user: prompt]`` (+ ``assistant: response``), as text, then tokenized
with ``add_special_tokens=False`` (the template already writes BOS and friends). Without one
(tiny test tokenizers, base models) the documented fallback is::

    System: {system}\\n          (only when system is given)
    User: {prompt}\\nAssistant: {response}{eos_token}

tokenized with the tokenizer's default special tokens.

Response tokens. The prompt-only conversation (with the generation prompt,
``add_generation_prompt=True``) and the full conversation are tokenized separately; the response
starts at the length of their common token prefix. This keeps the response tokenization exactly
as the model sees it in the full conversation, even when a token straddles the boundary (the
boundary token then counts as response).

End of turn. Training targets end with the end-of-turn token, so a refusal-trained model learns
to stop: the template's own end-of-turn (``<|im_end|>`` for SmolLM2) is kept and whatever the
template writes after the last ``eos_token_id`` of the response (e.g. a trailing newline) is
dropped; the fallback appends ``eos_token`` (a tokenizer without one gives unterminated targets).

Truncation to ``max_length`` keeps the whole response and drops prompt tokens from the left
(keeping at least one token before the response so that its first token has a context); a
response that cannot fit this way raises :class:`SSTError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sst_merge_plugin.core.errors import SSTError

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
PADDING_SIDES = ("left", "right")


@dataclass(frozen=True)
class EncodedChat:
    """Token ids of one turn; the response tokens are ``input_ids[response_start:]``."""

    input_ids: list[int]
    response_start: int

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (otherwise the fallback format is used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt: str, response: str | None, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja2 errors (e.g. a template that rejects a system turn)
        raise SSTError(f"the tokenizer's chat template failed on {messages!r}: {exc}") from exc


def prompt_text(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The templated prompt ending with the generation prompt, as text, for generation.

    Tokenize it with ``add_special_tokens=False`` when the tokenizer has a chat template (the
    template writes its own special tokens), or use ``encode_chat(..., response=None)``.
    """
    if has_chat_template(tokenizer):
        return _render(tokenizer, _messages(prompt, None, system), True)
    head = f"System: {system}\n" if system is not None else ""
    return f"{head}User: {prompt}\nAssistant: "


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_chat(
    tokenizer: Any,
    prompt: str,
    response: str | None,
    *,
    max_length: int,
    system: str | None = None,
) -> EncodedChat:
    """Encode one turn (see the module doc for the format, end of turn and truncation rules).

    With ``response=None`` the ids end with the generation prompt and ``response_start ==
    len(input_ids)``.
    """
    if max_length < 2:
        raise SSTError(f"max_length must be at least 2, got {max_length}")
    templated = has_chat_template(tokenizer)
    prompt_ids = _ids(tokenizer, prompt_text(tokenizer, prompt, system), not templated)
    if response is None:
        return EncodedChat(prompt_ids[-max_length:], min(len(prompt_ids), max_length))
    if templated:
        full_ids = _ids(
            tokenizer, _render(tokenizer, _messages(prompt, response, system), False), False
        )
    else:
        full_ids = _ids(tokenizer, prompt_text(tokenizer, prompt, system) + response, True)
        if tokenizer.eos_token_id is not None:
            full_ids.append(tokenizer.eos_token_id)
    start = _common_prefix(prompt_ids, full_ids)
    eos_id = tokenizer.eos_token_id
    if eos_id is not None and eos_id in full_ids[start:]:
        last = len(full_ids) - 1 - full_ids[::-1].index(eos_id)
        full_ids = full_ids[: last + 1]
    n_response = len(full_ids) - start
    if n_response < 1:
        raise SSTError(f"response {response!r} produced no tokens after the prompt")
    if n_response > max_length - 1:
        raise SSTError(
            f"the response needs {n_response} tokens, but max_length={max_length} leaves room for "
            f"{max_length - 1} (one context token is kept before it); raise max_length or "
            f"shorten the response {response[:60]!r}..."
        )
    if len(full_ids) > max_length:
        dropped = len(full_ids) - max_length
        return EncodedChat(full_ids[dropped:], start - dropped)
    return EncodedChat(full_ids, start)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``: token-id sequences padded with ``pad_id`` on
    ``padding_side`` to the longest, as ``long`` tensors of shape ``(batch, longest)``; the mask
    is 1 on the real tokens."""
    import torch

    if not sequences:
        raise SSTError("pad_batch needs at least one sequence")
    if padding_side not in PADDING_SIDES:
        raise SSTError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        offset = width - len(ids) if padding_side == "left" else 0
        input_ids[row, offset : offset + len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, offset : offset + len(ids)] = 1
    return input_ids, attention_mask


def collate(
    encoded: Sequence[EncodedChat], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch: ``input_ids``, ``attention_mask`` (1 on real tokens) and ``labels``.

    All are ``long`` tensors of shape ``(batch, longest)``. ``labels`` equals ``input_ids`` on
    the response tokens and ``-100`` elsewhere (prompt and padding); it is aligned with
    ``input_ids`` (Hugging Face convention: the model shifts it by one internally).
    """
    import torch

    if not encoded:
        raise SSTError("collate needs at least one encoded example")
    input_ids, attention_mask = pad_batch(
        [item.input_ids for item in encoded], pad_id, padding_side
    )
    width = input_ids.shape[1]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, item in enumerate(encoded):
        offset = width - len(item.input_ids) if padding_side == "left" else 0
        response = slice(offset + item.response_start, offset + len(item.input_ids))
        labels[row, response] = input_ids[row, response]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
