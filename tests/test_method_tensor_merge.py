"""``method/tensor_merge.py``: what ``merge_tensor`` hands to the projector."""

from __future__ import annotations

import pytest
import torch

from sst_merge_plugin.core import GEVPCache, KFACFisher
from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file
from sst_merge_plugin.method import tensor_merge
from sst_merge_plugin.method.fisher_sources import FisherSources
from sst_merge_plugin.method.settings import parse_inputs, parse_shared


def spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(dim, 3 * dim, generator=generator)
    return x @ x.T / x.shape[1]


def test_sst_merge_tells_the_projector_the_rounding_of_the_stored_safety_weight(
    tmp_path, monkeypatch
):
    """``ΔW_s = W_s − W0`` carries the rounding of the stored ``W_s``: ``u·‖W_s‖_F``."""
    name = "model.layers.0.mlp.down_proj.weight"
    generator = torch.Generator().manual_seed(0)
    paths = {}
    for label, objective in (("harm", "refusal"), ("benign", "kl")):
        paths[label] = tmp_path / f"{label}.safetensors"
        fisher = KFACFisher(spd(12, generator), spd(8, generator))
        write_fisher_file(
            paths[label], {name: fisher}, FisherMetadata("kfac", objective, 10, 2, "0" * 64)
        )
    settings = parse_shared("sst_merge", {"harm_fisher": str(paths["harm"]),
                                          "benign_fisher": str(paths["benign"]),
                                          "select": "ratio", "ratio": 1.0})  # fmt: skip
    inputs = parse_inputs("sst_merge", {"safety": {"role": "safety"}, "skill": {}})
    base = torch.randn(8, 12, generator=generator)
    update = 1e-3 * torch.randn(8, 2, generator=generator) @ torch.randn(2, 12, generator=generator)
    tensors = {"safety": base + update, "skill": base + 0.01}
    seen = []
    project = tensor_merge.project_patch

    def recording(*args, **kwargs):
        seen.append(kwargs["rounding"])
        return project(*args, **kwargs)

    monkeypatch.setattr(tensor_merge, "project_patch", recording)
    merged = tensor_merge.merge_tensor(
        name, base, tensors, inputs, settings, FisherSources.open(settings, inputs), GEVPCache()
    )
    assert merged.diagnostics["action"] == "projected"
    norm = float(torch.linalg.matrix_norm(tensors["safety"].double()))
    assert seen == [pytest.approx(torch.finfo(torch.float32).eps / 2 * norm, rel=1e-12)]
