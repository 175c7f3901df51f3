"""A cheap, dtype-independent fingerprint of a safetensors checkpoint (``model_fingerprint``).

The fingerprint identifies the *base* weights a Fisher file was collected on, so that a merge can
refuse Fishers of another model. It is computed from the checkpoint folder (what mergekit and
FusionBench load) without reading whole tensors:

    sha256( for each tensor name in sorted order:
              name, shape, float32 bytes of its first and last row (first/last element if 1-D) )

Reading two rows through ``safe_open(...).get_slice`` costs microseconds per tensor even for a
7B model; casting to float32 makes a bf16 and an fp32 copy of the same weights agree. The
fingerprint is over every tensor in the folder's ``*.safetensors`` files (tied weights that a
checkpoint omits are omitted on both sides alike).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sst_merge_plugin.fisher.file import FisherFileError


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The ``*.safetensors`` files of a Hugging Face model folder, sorted; error if none."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FisherFileError(f"model folder {str(folder)!r} does not exist")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FisherFileError(f"model folder {str(folder)!r} has no *.safetensors file")
    return files


def _edge_rows(tensor_slice, shape: list[int]) -> torch.Tensor:
    if not shape or shape[0] == 0:
        return torch.zeros(0)
    first, last = tensor_slice[:1], tensor_slice[shape[0] - 1 :]
    return torch.cat([first.reshape(-1), last.reshape(-1)]).to(torch.float32)


def checkpoint_fingerprint(model_dir: str | Path) -> str:
    """The ``model_fingerprint`` of the checkpoint in ``model_dir`` (hex sha256, see module doc)."""
    entries: dict[str, tuple[list[int], bytes]] = {}
    for path in checkpoint_files(model_dir):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    tensor_slice = handle.get_slice(name)
                    shape = list(tensor_slice.get_shape())
                    rows = _edge_rows(tensor_slice, shape)
                    entries[name] = (shape, rows.contiguous().numpy().tobytes())
        except SafetensorError as error:
            raise FisherFileError(f"cannot read checkpoint {str(path)!r}: {error}") from None
    digest = hashlib.sha256()
    for name in sorted(entries):
        shape, rows = entries[name]
        digest.update(f"{name}|{shape}|".encode())
        digest.update(rows)
    return digest.hexdigest()
