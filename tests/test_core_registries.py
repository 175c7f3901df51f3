"""The two extension points work end to end with nothing but a registration.

* A new Fisher kind — "kdiag", K-FAC with diagonal factors, ``F = diag(a) ⊗ diag(g)`` — written
  as one module's worth of code here (container, accumulator, projection) and registered:
  collection, the Fisher file, the CLI's ``--kind`` choices and the projector pick it up; its
  projection equals the ``diag`` kind's on the dense diagonal ``g aᵀ`` (an independent
  reference), and its accumulator equals the K-FAC factors' diagonals.
* A new selection mode — "median", keep λ ≥ median λ — registered: the method settings accept
  it and the projection equals ``ratio`` at τ = that median.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from support import tiny_llama
from torch import Tensor

from sst_merge_plugin.core import kinds, selection
from sst_merge_plugin.core.fisher import FisherBase, check_finite, check_patch, derived
from sst_merge_plugin.core.kinds import FisherKind, get_kind, kind_names
from sst_merge_plugin.core.kinds.diag import DiagFisher
from sst_merge_plugin.core.projector import project_patch
from sst_merge_plugin.core.selection import Selection, SelectMode
from sst_merge_plugin.core.statistics import LayerStatistics, SharedInput
from sst_merge_plugin.fisher.file import FisherFile, FisherMetadata, write_fisher_file


@dataclass(frozen=True)
class KDiagFisher(FisherBase):
    """``F = diag(a) ⊗ diag(g)``: ``a`` (1 × d_in) input second moments, ``g`` (d_out × 1)."""

    a: Tensor
    g: Tensor
    kind: ClassVar[str] = "kdiag"
    required_entries: ClassVar[tuple[str, ...]] = ("a", "g")

    def __post_init__(self) -> None:
        check_finite("kdiag a", self.a)
        check_finite("kdiag g", self.g)

    @property
    def weight_shape(self) -> tuple[int, int]:
        return int(self.g.shape[0]), int(self.a.shape[1])

    def dense(self) -> Tensor:
        return self.g @ self.a

    def trace(self) -> float:
        return float(self.dense().double().sum())

    def quadratic_form(self, patch: Tensor) -> float:
        check_patch(patch, self.weight_shape)
        return float((self.dense().double() * patch.double() ** 2).sum())

    def damped(self, epsilon: float, dtype: torch.dtype | None = None) -> KDiagFisher:
        return derived(self, a=self.a.to(dtype) * (1 + epsilon), g=self.g.to(dtype))

    def entries(self) -> dict[str, Tensor]:
        return {"a": self.a, "g": self.g}

    @classmethod
    def from_entries(cls, tensors: Mapping[str, Tensor]) -> KDiagFisher:
        return cls(tensors["a"], tensors["g"])

    @classmethod
    def weight_shape_of(cls, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        return int(shapes["g"][0]), int(shapes["a"][1])

    def identity_like(self) -> KDiagFisher:
        return KDiagFisher(torch.ones_like(self.a), torch.ones_like(self.g))

    def project(self, patch, benign, selection, trace_ratio, cache, solver):
        # elementwise, so the diag kind's projection on the dense diagonals is exact
        return DiagFisher(self.dense()).project(
            patch, DiagFisher(benign.dense()), selection, trace_ratio, cache, solver
        )


class KDiagStatistics(LayerStatistics):
    kind = "kdiag"
    sum_names = ("a", "g")

    def _forward(self, inputs: SharedInput) -> None:
        self.sums["a"].add(inputs.squared().sum(0, keepdim=True))

    def _backward(self, saved: object, grads: Tensor) -> None:
        self.sums["g"].add(grads.square().sum(0)[:, None])

    def _fisher(self, averages: dict[str, Tensor]) -> KDiagFisher:
        return KDiagFisher(averages["a"], averages["g"])


KDIAG = FisherKind("kdiag", KDiagFisher, KDiagStatistics, summary="diagonal K-FAC factors")


@pytest.fixture
def kdiag(monkeypatch: pytest.MonkeyPatch) -> FisherKind:
    monkeypatch.setitem(kinds._REGISTERED, "kdiag", KDIAG)  # removed again after the test
    return KDIAG


def test_a_registered_kind_flows_through_collection_file_cli_and_projection(kdiag, tmp_path):
    from sst_merge_plugin.cli import build_parser
    from sst_merge_plugin.fisher.collect import collect_statistics

    assert kind_names() == ("diag", "kfac", "lora", "kdiag") and get_kind("kdiag") is kdiag
    args = build_parser().parse_args(
        ["fisher", "--model", "m", "--data", "d", "--objective", "kl", "--kind", "kdiag",
         "--out", "o"]
    )  # fmt: skip
    assert args.kind == "kdiag"

    model = tiny_llama(40, hidden=16)
    generator = torch.Generator().manual_seed(3)
    batch = {
        "input_ids": torch.randint(0, 40, (3, 9), generator=generator),
        "attention_mask": torch.ones(3, 9, dtype=torch.long),
    }
    batch["labels"] = batch["input_ids"].clone()
    collected = collect_statistics(model, [batch], kind="kdiag", targets="q_proj,down_proj")
    reference = collect_statistics(model, [batch], kind="kfac", targets="q_proj,down_proj")
    assert sorted(collected.fishers) == sorted(reference.fishers)
    for name, fisher in collected.fishers.items():  # the factors' diagonals
        a, g = torch.diagonal(reference.fishers[name].A), torch.diagonal(reference.fishers[name].G)
        torch.testing.assert_close(fisher.a[0], a, rtol=1e-5, atol=1e-12)  # float32 products
        torch.testing.assert_close(fisher.g[:, 0], g, rtol=1e-5, atol=1e-12)

    path = tmp_path / "kdiag.safetensors"
    meta = FisherMetadata("kdiag", "lm", collected.n_tokens, collected.n_examples, "0" * 64)
    write_fisher_file(path, collected.fishers, meta)
    opened = FisherFile(path)
    name = "model.layers.0.mlp.down_proj.weight"
    assert opened.kind == "kdiag" and opened.weight_shape(name) == (16, 32)
    harm = opened.get(name)
    benign = KDiagFisher(harm.a.flip(1) + 0.1, harm.g + 0.2)
    patch = torch.randn(16, 32, generator=generator, dtype=torch.float64)
    chosen = Selection.create("ratio", ratio=1.0)
    result = project_patch(patch, harm, benign, chosen, damping=0.0)
    expected = project_patch(
        patch, DiagFisher(harm.dense()), DiagFisher(benign.dense()), chosen, damping=0.0
    )
    torch.testing.assert_close(result.patch, expected.patch, rtol=0, atol=0)
    assert 0 < result.diagnostics.kept < patch.numel()


def _median(normalised: Tensor, coords: Tensor, value: object, total_gain: float) -> Tensor:
    return (normalised >= normalised.median()).to(coords.dtype)


def test_a_registered_mode_flows_through_the_settings_and_the_projector(monkeypatch):
    from sst_merge_plugin.method.settings import parse_shared

    mode = SelectMode("median", None, None, lambda value: None, _median, doc="λ ≥ median λ")
    monkeypatch.setitem(selection._MODES, "median", mode)
    settings = parse_shared("sst_merge", {"harm_fisher": "h", "benign_fisher": "b",
                                          "select": "median"})  # fmt: skip
    assert settings.selection == Selection("median") and settings.as_dict()["selection"] == {
        "mode": "median"
    }
    rng = np.random.default_rng(4)
    harm = DiagFisher(torch.tensor(rng.random((6, 5)) + 0.1))
    benign = DiagFisher(torch.tensor(rng.random((6, 5)) + 0.1))
    patch = torch.tensor(rng.standard_normal((6, 5)))
    median = project_patch(patch, harm, benign, settings.selection, damping=0.0)
    tau = median.diagnostics.lambda_median
    ratio = project_patch(patch, harm, benign, Selection.create("ratio", ratio=tau), damping=0.0)
    torch.testing.assert_close(median.patch, ratio.patch, rtol=0, atol=0)
