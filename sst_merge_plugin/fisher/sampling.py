"""Seeded sampling of responses from the model itself (labels of the ``kl`` objective).

The ``kl`` objective is the TRUE Fisher of the model's output distribution on benign prompts,
``F = E_{x} E_{y ~ p_θ(·|x)} [∇ log p_θ(y|x) ∇ log p_θ(y|x)ᵀ]`` (= the Hessian of
``KL(p_θ0 ‖ p_θ)`` at ``θ = θ0``). Its labels must be drawn from the model, not taken from data:
:func:`sample_responses` draws, for each prompt, tokens ``y_t ~ p_θ(· | prompt, y_<t)`` one at a
time with temperature 1 and no top-k/top-p truncation — exact ancestral samples of the model's
own distribution — until an end-of-sequence token (kept as the last label) or ``n_tokens``.

Reproducibility: prompt ``i`` gets its own ``torch.Generator`` seeded with
:func:`row_seed(seed, i) <row_seed>`, so its sample depends on ``(seed, i)`` and the model only,
not on which other prompts share its batch (up to float round-off of batched logits). Prompts
are left-padded and decoded with a KV cache and explicit position ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.fisher import all_finite
from sst_merge_plugin.data.chat import pad_batch


def row_seed(seed: int, index: int) -> int:
    """The generator seed of prompt ``index``: 63 bits of ``sha256(f"kl:{seed}:{index}")``."""
    digest = hashlib.sha256(f"kl:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less module)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def eos_token_ids(model: nn.Module, tokenizer: object) -> set[int]:
    """End-of-sequence ids: the model's ``generation_config.eos_token_id`` and the tokenizer's."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    for value in (configured, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n_tokens: int,
    seed: int,
    pad_id: int,
    eos_ids: Collection[int] = (),
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[int]]:
    """One sampled response (token ids, 1 to ``n_tokens`` long) per prompt (module doc)."""
    if n_tokens < 1:
        raise SSTError(f"the number of response tokens to sample must be >= 1, got {n_tokens}")
    if batch_size < 1:
        raise SSTError(f"batch size must be >= 1, got {batch_size}")
    if any(len(ids) == 0 for ids in prompt_ids):
        raise SSTError("cannot sample a response to an empty prompt")
    device = model_device(model)
    was_training = model.training
    model.eval()
    responses: list[list[int]] = []
    try:
        starts = range(0, len(prompt_ids), batch_size)
        for start in tqdm(starts, desc="sampling responses", unit="batch", disable=not progress):
            chunk = prompt_ids[start : start + batch_size]
            responses.extend(
                _sample_batch(model, chunk, start, n_tokens, seed, pad_id, set(eos_ids), device)
            )
    finally:
        model.train(was_training)
    return responses


def _sample_batch(
    model: nn.Module,
    chunk: Sequence[Sequence[int]],
    first_index: int,
    n_tokens: int,
    seed: int,
    pad_id: int,
    eos_ids: set[int],
    device: torch.device,
) -> list[list[int]]:
    rows = len(chunk)
    input_ids, attention_mask = pad_batch(chunk, pad_id, "left")
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    generators = [
        torch.Generator(device=device).manual_seed(row_seed(seed, first_index + row))
        for row in range(rows)
    ]
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
    )
    sampled: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    next_position = position_ids[:, -1:] + 1
    for step in range(n_tokens):
        probabilities = torch.softmax(output.logits[:, -1].float(), dim=-1)
        if not all_finite(probabilities):
            raise SSTError("the model produced non-finite logits while sampling kl responses")
        tokens = []
        for row in range(rows):
            if finished[row]:
                tokens.append(pad_id)
                continue
            token = int(torch.multinomial(probabilities[row], 1, generator=generators[row]))
            sampled[row].append(token)
            finished[row] = token in eos_ids
            tokens.append(token)
        if all(finished) or step == n_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=1)
        output = model(
            input_ids=torch.tensor(tokens, device=device).unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=output.past_key_values,
            use_cache=True,
        )
        next_position = next_position + 1
    return sampled
