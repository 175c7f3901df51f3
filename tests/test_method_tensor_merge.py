"""``method/tensor_merge.py``: what ``merge_tensor`` hands to the projector."""

from __future__ import annotations

import torch

from sst_merge_plugin.core import GEVPCache, KFACFisher, project_patch
from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file
from sst_merge_plugin.method import tensor_merge
from sst_merge_plugin.method.fisher_sources import FisherSources
from sst_merge_plugin.method.settings import parse_inputs, parse_shared


def spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(dim, 3 * dim, generator=generator, dtype=torch.float64)
    return x @ x.T / x.shape[1]


def test_kfac_sst_merge_projects_the_stored_safety_difference_bit_for_bit(tmp_path):
    """Merged weights must not change between releases: a LoRA update merged into stored
    float32 weights is projected as the difference ``W_s − W0`` it is stored as (no low-rank
    refactoring that drops its rounding), so the merged tensor is exactly
    ``fl32(W_U + s·w_s·P(W_s − W0))`` — ``torch.equal``."""
    name = "model.layers.0.mlp.down_proj.weight"
    generator = torch.Generator().manual_seed(0)
    d_out, d_in = 120, 100
    fishers = {}
    for label, objective in (("harm", "refusal"), ("benign", "kl")):
        path = tmp_path / f"{label}.safetensors"
        fishers[label] = KFACFisher(spd(d_in, generator), spd(d_out, generator))
        write_fisher_file(path, {name: fishers[label]}, FisherMetadata("kfac", objective, 10, 2, "0" * 64))  # fmt: skip
    settings = parse_shared("sst_merge", {"harm_fisher": str(tmp_path / "harm.safetensors"),
                                          "benign_fisher": str(tmp_path / "benign.safetensors"),
                                          "select": "ratio", "ratio": 1.0, "scale": 2.0})  # fmt: skip
    inputs = parse_inputs("sst_merge", {"safety": {"role": "safety"}, "skill": {}})
    base = torch.randn(d_out, d_in, generator=generator)
    update = (
        1e-3
        * torch.randn(d_out, 4, generator=generator)
        @ torch.randn(4, d_in, generator=generator)
    )
    tensors = {
        "safety": base + update,
        "skill": base + 0.01 * torch.randn(d_out, d_in, generator=generator),
    }
    merged = tensor_merge.merge_tensor(
        name, base, tensors, inputs, settings, FisherSources.open(settings, inputs), GEVPCache()
    )
    assert merged.diagnostics["action"] == "projected"
    utility = tensor_merge.utility_merge(
        base, {"skill": tensors["skill"]}, {"skill": inputs["skill"]}, settings.utility_merge
    )
    delta = tensors["safety"].double() - base.double()
    # the Fisher file stores float32 factors; project with what the merge reads back
    harm, benign = (KFACFisher(f.A.float(), f.G.float()) for f in fishers.values())
    projected = project_patch(delta, harm, benign, settings.selection).patch
    expected = (utility.double() + 2.0 * projected).to(base.dtype)
    assert torch.equal(merged.tensor, expected)
