"""Which Linear layers of a causal LM a Fisher is collected on, keyed by their dense weight name.

Candidates are the model's ``nn.Linear`` modules; with a PEFT adapter applied, a LoRA-wrapped
layer is one candidate (the wrapper, whose input and output are the adapted layer's), and the
``base_layer`` / ``lora_A`` / ``lora_B`` Linears inside it are not candidates themselves.

Every candidate is keyed by the **dense weight name** mergekit sees in the checkpoint: the module
name with PEFT's ``base_model.model.`` prefix and any ``.base_layer`` removed, plus ``.weight``
(``base_model.model.model.layers.3.mlp.down_proj`` → ``model.layers.3.mlp.down_proj.weight``).

Selection (``targets``):

* ``None`` — the default: every candidate inside a repeated block (its module name has a numeric
  component, e.g. ``model.layers.7.``), i.e. q, k, v, o, gate, up, down for Llama; never the
  output embedding (``lm_head``).
* a comma-separated list of dotted names, e.g. ``q_proj,v_proj`` or
  ``model.layers.0.mlp.down_proj.weight``: a candidate is selected when one item equals its
  dense weight name, or its dense module name, or a dotted suffix of either. Every item must
  select at least one candidate.
* anything else is a regular expression, matched with ``re.search`` against the dense weight
  names of all candidates (e.g. ``layers\\.(0|1)\\..*_proj``); it must select something.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from torch import nn

from sst_merge_plugin.core.errors import SSTError

PEFT_PREFIX = "base_model.model."
_LIST_PATTERN = re.compile(r"^[\w.]+(,[\w.]+)*$")
_BLOCK_COMPONENT = re.compile(r"\.\d+\.")


def dense_weight_name(module_name: str) -> str:
    """The checkpoint weight name of a (possibly PEFT-wrapped) Linear module (see module doc)."""
    name = module_name.removeprefix(PEFT_PREFIX)
    name = ".".join(part for part in name.split(".") if part != "base_layer")
    return f"{name}.weight"


def _is_lora_wrapper(module: nn.Module) -> bool:
    """A PEFT tuner layer wrapping a base layer (``peft`` is imported only if it is loaded)."""
    return hasattr(module, "base_layer") and hasattr(module, "get_base_layer")


def linear_candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Dense weight name → module to hook, for every Linear (or LoRA-wrapped Linear) layer."""
    wrappers: list[str] = []
    candidates: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{wrapper}.") for wrapper in wrappers):
            continue  # base_layer, lora_A, lora_B, ... inside an adapted layer
        if _is_lora_wrapper(module):
            if not isinstance(module.get_base_layer(), nn.Linear):
                continue
            wrappers.append(name)
        elif not isinstance(module, nn.Linear):
            continue
        key = dense_weight_name(name)
        if key in candidates:
            raise SSTError(f"two Linear modules map to the same weight name {key!r}")
        candidates[key] = module
    return candidates


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of a hooked layer's dense weight."""
    base = module.get_base_layer() if _is_lora_wrapper(module) else module
    return int(base.out_features), int(base.in_features)


def _output_embedding_names(model: nn.Module, candidates: Mapping[str, nn.Module]) -> set[str]:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None:
        return set()
    return {
        name
        for name, module in candidates.items()
        if output in (module, module.get_base_layer() if _is_lora_wrapper(module) else None)
    }


def _short_names(names: Sequence[str]) -> str:
    short = sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in names})
    return ", ".join(short)


def select_targets(
    candidates: Mapping[str, nn.Module], targets: str | None, *, exclude: set[str] | None = None
) -> dict[str, nn.Module]:
    """Apply a ``targets`` specification (see module doc) to ``candidates``; error if empty.

    ``exclude`` (the output embedding) is left out of the default selection only.
    """
    if not candidates:
        raise SSTError("the model has no nn.Linear layers to collect a Fisher on")
    if targets is None or not targets.strip():
        chosen = {
            name: module
            for name, module in candidates.items()
            if _BLOCK_COMPONENT.search(f".{name}") and name not in (exclude or set())
        }
        if not chosen:
            raise SSTError(
                "the model has no Linear layers inside repeated blocks; choose layers with "
                f"--targets (available: {_short_names(list(candidates))})"
            )
        return chosen
    spec = targets.strip()
    if _LIST_PATTERN.match(spec):
        chosen = {}
        for item in spec.split(","):
            matched = {
                name: module
                for name, module in candidates.items()
                if _matches_dotted(name, item.removesuffix(".weight"))
            }
            if not matched:
                raise SSTError(
                    f"--targets item {item!r} matches no Linear layer of the model (layer names "
                    f"end in: {_short_names(list(candidates))})"
                )
            chosen.update(matched)
        return {name: candidates[name] for name in candidates if name in chosen}
    try:
        pattern = re.compile(spec)
    except re.error as error:
        raise SSTError(
            f"--targets {spec!r} is neither a list of names nor a regex: {error}"
        ) from None
    chosen = {name: module for name, module in candidates.items() if pattern.search(name)}
    if not chosen:
        raise SSTError(
            f"--targets regex {spec!r} matches no Linear weight of the model (e.g. "
            f"{next(iter(candidates))!r})"
        )
    return chosen


def _matches_dotted(weight_name: str, item: str) -> bool:
    module_name = weight_name.removesuffix(".weight")
    return module_name == item or module_name.endswith(f".{item}")


def find_target_layers(model: nn.Module, targets: str | None = None) -> dict[str, nn.Module]:
    """Dense weight name → module to hook, for the layers ``targets`` selects (module doc)."""
    candidates = linear_candidates(model)
    return select_targets(candidates, targets, exclude=_output_embedding_names(model, candidates))


def meta_model(model_dir: str | os.PathLike[str]) -> nn.Module:
    """The causal LM's module structure on the meta device, from its ``config.json`` (no weights
    read); :class:`SSTError` for a folder that is not a causal LM."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise SSTError(f"cannot read the model config in {str(model_dir)!r}: {error}") from None
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as error:
        raise SSTError(f"{str(model_dir)!r} is not a causal language model: {error}") from None
