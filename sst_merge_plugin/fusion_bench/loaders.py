"""Model loaders for FusionBench model-pool configs (``_target_`` of a ``CausalLMPool`` entry).

:func:`load_lora_causal_lm` loads a base causal LM plus a PEFT (LoRA) adapter and merges the
adapter into dense weights, like mergekit's ``base+lora`` inputs. It wraps FusionBench's own
``load_peft_causal_lm`` and adds what that one lacks for merging:

* ``requires_grad_(True)`` on the merged model — PEFT leaves the merged parameters frozen, and
  FusionBench's DARE (``fusion_bench.method.dare``) skips frozen parameters, so it would see
  empty task vectors;
* the pool's ``model_kwargs`` (``torch_dtype``) are honoured, with float32 as the default (the
  merge arithmetic of every method then runs in float32);
* ``adapter_weight`` scales the adapter before it is merged (``W0 + weight·(alpha/r)·B·A``, like
  a mergekit input's ``weight``), for host algorithms that take no per-model weights;
* a missing folder is an :class:`~sst_merge_plugin.core.errors.SSTError` naming the path.

Pool entry::

    safety:
      _target_: sst_merge_plugin.fusion_bench.loaders.load_lora_causal_lm
      pretrained_model_name_or_path: /models/base        # the base the adapter was trained on
      adapter_path: /adapters/safety
      adapter_weight: 2.0                               # optional, default 1
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from fusion_bench.modelpool.causal_lm import load_peft_causal_lm
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from sst_merge_plugin.core.errors import SSTError

#: file that marks a PEFT adapter folder
ADAPTER_CONFIG = "adapter_config.json"


def load_lora_causal_lm(
    pretrained_model_name_or_path: str | os.PathLike[str],
    adapter_path: str | os.PathLike[str],
    *,
    adapter_weight: float = 1.0,
    torch_dtype: str | torch.dtype | None = None,
    **unused_model_kwargs: Any,
) -> PreTrainedModel:
    """Base model with the LoRA adapter at ``adapter_path`` merged in with weight
    ``adapter_weight`` (``W = W0 + adapter_weight·(alpha/r)·B·A``), all parameters trainable.

    ``pretrained_model_name_or_path`` is a local Hugging Face model folder (the name matches
    ``CausalLMPool.get_model_path``). ``torch_dtype`` defaults to float32. Other pool
    ``model_kwargs`` (e.g. ``low_cpu_mem_usage``) are accepted and ignored, because
    FusionBench's PEFT loader takes none. Raises :class:`SSTError` before loading anything
    when a folder is missing or is not a PEFT adapter, or the weight is not a finite number.
    """
    base = Path(pretrained_model_name_or_path).expanduser()
    adapter = Path(adapter_path).expanduser()
    if not (base / "config.json").is_file():
        raise SSTError(f"base model folder {str(base)!r} has no config.json")
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise SSTError(
            f"adapter folder {str(adapter)!r} has no {ADAPTER_CONFIG} (not a PEFT adapter)"
        )
    if isinstance(adapter_weight, bool) or not (
        isinstance(adapter_weight, int | float) and math.isfinite(adapter_weight)
    ):
        raise SSTError(f"adapter_weight must be a finite number, got {adapter_weight!r}")
    model = load_peft_causal_lm(
        str(base),
        str(adapter),
        torch_dtype=torch_dtype or "float32",
        is_trainable=False,
        merge_and_unload=False,
    )
    if adapter_weight != 1:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.scale_layer(adapter_weight)
    model = model.merge_and_unload()
    model.requires_grad_(True)
    return model
