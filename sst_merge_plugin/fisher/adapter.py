"""PEFT LoRA adapter folders as the Fisher collector reads them: layers, digest, subspaces.

A LoRA adapter folder holds ``adapter_config.json`` (``peft_type: LORA``) and
``adapter_model.safetensors`` (never a pickle ``.bin``) with, per adapted Linear layer ``M``,
``base_model.model.M.lora_A.weight`` (``r × d_in``) and ``…lora_B.weight`` (``d_out × r``). Layers
are keyed by the dense weight name ``M.weight`` (:func:`~.targets.dense_weight_name`).

Subspaces (kind ``lora``, ``docs/design.md`` §2.3). The adapter's update ``ΔW = s·B A`` has its column space
in ``span B`` and its row space in ``span Aᵀ``. :func:`adapter_subspaces` returns per layer
``U`` (``d_out × r_out``) and ``V`` (``d_in × r_in``) with orthonormal columns spanning them,
from thin SVDs of ``B`` and ``Aᵀ``, keeping singular directions with
``σ > RANK_RTOL · σ_max`` (so a rank-deficient factor gives ``r < rank``; a zero factor — an
untrained adapter has ``B = 0`` — is an error). Each column's sign is fixed so that its
largest-magnitude entry is positive, so the same adapter always yields the same bases.

:func:`sort_adapter_config` makes the ``adapter_config.json`` that PEFT writes reproducible (PEFT
stores ``target_modules`` as a set and writes it in ``hash()`` order, which changes with every
interpreter); the plugin's adapter writers call it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.fisher.targets import dense_weight_name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: singular values below ``RANK_RTOL · σ_max`` do not count towards a factor's span
RANK_RTOL = 1e-6
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<factor>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoRAAdapter:
    """The LoRA factors of an adapter folder: dense weight name → ``(lora_A, lora_B)``."""

    path: Path
    layers: Mapping[str, tuple[Tensor, Tensor]]
    sha256: str
    use_dora: bool = False

    def weight_shapes(self) -> dict[str, tuple[int, int]]:
        """``(d_out, d_in)`` of the dense weight each adapted layer updates."""
        return {
            name: (int(lora_b.shape[0]), int(lora_a.shape[1]))
            for name, (lora_a, lora_b) in self.layers.items()
        }


def sort_adapter_config(folder: str | os.PathLike[str], config: object) -> None:
    """Rewrite ``folder/adapter_config.json``, as PEFT's ``save_pretrained`` of ``config`` (a
    ``PeftConfig``) wrote it, with every set-valued field (``target_modules``, ...) as a sorted
    list instead of PEFT's ``hash()``-ordered one; PEFT's own format otherwise (indented JSON,
    sorted keys)."""
    path = Path(folder) / CONFIG_FILE
    written = json.loads(path.read_text(encoding="utf-8"))
    for key, value in vars(config).items():
        if isinstance(value, set | frozenset) and isinstance(written.get(key), list):
            written[key] = sorted(written[key], key=str)
    path.write_text(json.dumps(written, indent=2, sort_keys=True), encoding="utf-8")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_lora_adapter(path: str | os.PathLike[str]) -> LoRAAdapter:
    """Read and validate a PEFT LoRA adapter folder (see module doc); :class:`SSTError` if not."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SSTError(f"adapter folder {str(folder)!r} does not exist")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise SSTError(f"{str(folder)!r} is not a PEFT adapter folder (no {CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SSTError(f"{str(config_path)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else config
        raise SSTError(f"{str(folder)!r} is not a LoRA adapter (peft_type {found!r})")
    if not weights_path.is_file():
        hint = (
            " (pickle .bin adapters are not read; re-save with safetensors)"
            if (folder / "adapter_model.bin").is_file()
            else ""
        )
        raise SSTError(f"{str(folder)!r} has no {WEIGHTS_FILE}{hint}")
    factors: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                match = _LORA_KEY.match(key)
                if match:
                    name = dense_weight_name(match["module"])
                    factors.setdefault(name, {})[match["factor"]] = handle.get_tensor(key)
    except (SafetensorError, OSError) as error:
        raise SSTError(f"cannot read {str(weights_path)!r}: {error}") from None
    layers: dict[str, tuple[Tensor, Tensor]] = {}
    for name, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            raise SSTError(f"adapter {str(folder)!r}: layer {name!r} lacks lora_A or lora_B")
        lora_a, lora_b = pair["A"], pair["B"]
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
            raise SSTError(
                f"adapter {str(folder)!r}: layer {name!r} has lora_A {tuple(lora_a.shape)} and "
                f"lora_B {tuple(lora_b.shape)}, which do not chain (expected r×d_in and d_out×r)"
            )
        layers[name] = (lora_a, lora_b)
    if not layers:
        raise SSTError(f"adapter {str(folder)!r} has no LoRA Linear layers (lora_A/lora_B weights)")
    return LoRAAdapter(folder, layers, _file_sha256(weights_path), bool(config.get("use_dora")))


def check_adapter_matches(
    adapter: LoRAAdapter, model_shapes: Mapping[str, tuple[int, int]], model_label: str
) -> None:
    """Raise unless every adapted layer is a Linear weight of the model with the same shape.

    ``model_shapes``: dense weight name → ``(d_out, d_in)`` of the model's Linear layers.
    """
    for name, shape in adapter.weight_shapes().items():
        if name not in model_shapes:
            raise SSTError(
                f"adapter {str(adapter.path)!r} does not fit base model {model_label!r}: it "
                f"adapts {name!r}, which is not a Linear weight of that model"
            )
        if model_shapes[name] != shape:
            raise SSTError(
                f"adapter {str(adapter.path)!r} does not fit base model {model_label!r}: "
                f"{name!r} is {model_shapes[name]} in the model but {shape} in the adapter"
            )


def orthonormal_range(matrix: Tensor, what: str) -> Tensor:
    """Orthonormal basis (float64, sign-fixed columns) of the column space of ``matrix``."""
    left, singular, _ = torch.linalg.svd(matrix.double(), full_matrices=False)
    if singular.numel() == 0 or float(singular[0]) == 0.0 or not bool(singular.isfinite().all()):
        raise SSTError(f"{what} is zero or not finite, so it spans no subspace")
    basis = left[:, singular > RANK_RTOL * singular[0]]
    pivots = basis.abs().argmax(dim=0)
    signs = torch.sign(basis[pivots, torch.arange(basis.shape[1])])
    return basis * signs


def adapter_subspaces(*adapters: LoRAAdapter) -> dict[str, tuple[Tensor, Tensor]]:
    """Dense weight name → ``(U, V)``: the column and row spaces of the adapters' updates on
    that weight (module doc). With several adapters, the *joint* spans
    ``U = orth[B_1, B_2, …]``, ``V = orth[A_1ᵀ, A_2ᵀ, …]`` of the adapters that adapt the
    weight, so one ``lora`` Fisher holds every adapter's update exactly (the dual projection of
    each utility adapter, ``docs/design.md`` §1.6)."""
    if not adapters:
        raise SSTError("adapter_subspaces needs at least one adapter")
    for adapter in adapters:
        if adapter.use_dora:
            raise SSTError(
                f"adapter {str(adapter.path)!r} is a DoRA adapter: its update is not confined "
                "to span(B) ⊗ span(Aᵀ), so it cannot define a lora Fisher subspace"
            )
    names = sorted({name for adapter in adapters for name in adapter.layers})
    paths = ", ".join(repr(str(adapter.path)) for adapter in adapters)
    subspaces = {}
    for name in names:
        pairs = [adapter.layers[name] for adapter in adapters if name in adapter.layers]
        subspaces[name] = (
            orthonormal_range(
                torch.cat([b for _, b in pairs], dim=1), f"{name}: lora_B of {paths}"
            ),
            orthonormal_range(
                torch.cat([a.T for a, _ in pairs], dim=1), f"{name}: lora_A of {paths}"
            ),
        )
    return subspaces
