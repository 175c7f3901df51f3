"""Write merge deltas as a PEFT LoRA adapter (``write_adapter: safety|merged``).

For each weight ``N = <module>.weight`` with delta ``ΔW = B A`` (``B``: ``d_out × r``,
``A``: ``r × d_in``) the adapter stores ``base_model.model.<module>.lora_B.weight = B`` and
``...lora_A.weight = A`` with ``lora_alpha = r`` per module (``rank_pattern``/``alpha_pattern``),
so PEFT's scaling ``alpha/r`` is 1 and ``PeftModel.from_pretrained(base, dir)`` applies exactly
``W0 + B A``.

* ``safety`` — the lora-kind projection's own factors ``s·w_s·U Q (M⊙C)``, ``Pᵀ Vᵀ``: rank ≤ r,
  exact.
* ``merged`` — the whole delta ``W − W0`` as written (utility merge + safety patch), factored by
  :func:`exact_factors`: a truncated SVD that keeps singular values above
  ``RANK_RTOL · σ_max``. The threshold sits above float32 rounding noise (~1e-7 relative), so the
  adapter reproduces the merged weights to ~1e-6 relative; the rank is the delta's numerical
  rank — ≤ Σ r_i + r for task arithmetic of LoRA inputs, but generally full for TIES/DARE,
  whose sparsification destroys low rank (the report lists each module's rank).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sst_merge_plugin.atomic import atomic_path
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.fisher.adapter import sort_adapter_config

#: relative singular-value threshold of :func:`exact_factors`
RANK_RTOL = 1e-6
ADAPTER_DIR = "sst_adapter"


def exact_factors(delta: Tensor, rtol: float = RANK_RTOL) -> tuple[Tensor, Tensor]:
    """``(B, A)`` with ``B @ A ≈ delta`` from the SVD truncated at ``rtol · σ_max`` (float64).

    ``B = U_k diag(σ_k)``, ``A = V_kᵀ``; rank ≥ 1 (a zero delta gives one zero pair).
    """
    u, sigma, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    rank = max(int((sigma > rtol * float(sigma[0])).sum()), 1) if sigma.numel() else 1
    return u[:, :rank] * sigma[:rank], vh[:rank]


def module_name(weight_name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` → ``model.layers.0.mlp.up_proj``."""
    if not weight_name.endswith(".weight"):
        raise SSTError(f"{weight_name}: only '<module>.weight' tensors can be LoRA adapter targets")
    return weight_name[: -len(".weight")]


def write_peft_adapter(
    path: str | os.PathLike[str],
    factors: Mapping[str, tuple[Tensor, Tensor]],
    base_model: str,
) -> dict[str, Any]:
    """Write ``factors`` (weight name → ``(B, A)``) as a PEFT LoRA adapter folder, atomically.

    Returns a summary for the report: the folder's name (relative to the merge output, which
    may have been written under a temporary name), module count and rank per module.
    """
    from peft import LoraConfig

    if not factors:
        raise SSTError("no tensor has an adapter delta; nothing to write")
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    for name, (left, right) in sorted(factors.items()):
        module = module_name(name)
        ranks[module] = int(left.shape[1])
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = right.to(torch.float32).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = left.to(torch.float32).contiguous()
    top = max(ranks.values())
    config = LoraConfig(
        r=top,
        lora_alpha=top,
        target_modules=sorted(ranks),
        rank_pattern={m: r for m, r in ranks.items() if r != top},
        alpha_pattern={m: r for m, r in ranks.items() if r != top},
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    with atomic_path(path, directory=True) as temporary:
        config.save_pretrained(str(temporary))
        sort_adapter_config(temporary, config)
        save_file(tensors, str(Path(temporary) / "adapter_model.safetensors"))
    return {"path": Path(path).name, "n_modules": len(ranks), "ranks": ranks}
