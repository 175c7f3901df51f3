"""The dual projection (``project: utility | both``) in the method layer, against dense scipy
references: each utility delta replaced by the closed-form minimiser of
``‖φ − ΔW_i‖²_{G_i} + ρ c ‖φ‖²_C`` (``soft``) or its top generalized eigen-directions of
``(G_i, C)`` (``ratio``), for the ``kfac`` and ``diag`` kinds; the ``lora`` kind equals the
``kfac`` kind for deltas in the (joint) adapter subspace; ``project: safety`` is today's merge bit
for bit; the single-Fisher utility baseline keeps the directions ``C`` penalises least; bad
inputs fail with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from test_core_projector import damp, spd, unvec, vec

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.kinds.diag import DiagFisher
from sst_merge_plugin.core.kinds.kfac import KFACFisher
from sst_merge_plugin.core.kinds.lora import LoRAFisher
from sst_merge_plugin.fisher.file import FisherFileError, FisherMetadata, write_fisher_file
from sst_merge_plugin.method.fisher_sources import FisherSources
from sst_merge_plugin.method.session import MergeSession
from sst_merge_plugin.method.settings import parse_inputs, parse_shared
from sst_merge_plugin.method.tensor_merge import merge_tensor

D_OUT, D_IN, EPS = 6, 5, 1e-2
NAME = "model.layers.0.mlp.down_proj.weight"


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def write(path: Path, fisher, kind: str, objective: str = "lm") -> str:
    write_fisher_file(path, {NAME: fisher}, FisherMetadata(kind, objective, 10, 2, "0" * 64),
                      dtype=torch.float64)  # fmt: skip
    return str(path)


def world(rng: np.random.Generator, rank: int | None = None):
    """Base weight, safety and two utility inputs (deltas of ``rank`` in a shared subspace when
    given, else full), as float64 tensors keyed like a host's inputs."""
    base = rng.standard_normal((D_OUT, D_IN))
    if rank is None:
        deltas = [rng.standard_normal((D_OUT, D_IN)) for _ in range(3)]
        basis = None
    else:
        u = np.linalg.qr(rng.standard_normal((D_OUT, D_OUT)))[0]
        v = np.linalg.qr(rng.standard_normal((D_IN, D_IN)))[0]
        basis = (u, v)
        deltas = [u[:, :rank] @ rng.standard_normal((rank, rank)) @ v[:, :rank].T for _ in range(3)]
    tensors = {
        name: t(base + d) for name, d in zip(("safety", "upper", "rev"), deltas, strict=True)
    }
    return t(base), tensors, deltas, basis


def merged(tmp_path, base, tensors, shared: dict, per_model: dict, method: str = "sst_merge"):
    inputs = parse_inputs(
        method,
        {
            "safety": {"role": "safety", "weight": 1.0},
            "upper": {"weight": 0.5, **per_model.get("upper", {})},
            "rev": {"weight": 1.0, **per_model.get("rev", {})},
        },
    )
    settings = parse_shared(method, shared)
    fishers = FisherSources.open(settings, inputs)
    session = MergeSession(method)
    result = merge_tensor(NAME, base, tensors, inputs, settings, fishers, session.cache)
    session.record(NAME, base, result, settings)
    return result, session


def soft_reference(delta: np.ndarray, f_g: np.ndarray, f_c: np.ndarray, rho: float) -> np.ndarray:
    c = np.trace(f_g) / np.trace(f_c)
    return unvec(np.linalg.solve(f_g + rho * c * f_c, f_g @ vec(delta)), delta.shape)


def ratio_reference(delta: np.ndarray, f_g: np.ndarray, f_c: np.ndarray, tau: float) -> np.ndarray:
    lam, vecs = scipy.linalg.eigh(f_g, f_c)  # vecsᵀ f_c vecs = I
    keep = lam / (np.trace(f_g) / np.trace(f_c)) >= tau
    coords = vecs.T @ f_c @ vec(delta)
    return unvec(vecs[:, keep] @ coords[keep], delta.shape)


@pytest.mark.parametrize("kind", ["kfac", "diag"])
@pytest.mark.parametrize(("select", "value"), [("soft", 0.7), ("ratio", 1.0)])
def test_utility_side_equals_the_dense_reference(tmp_path, kind, select, value):
    rng = np.random.default_rng(11)
    base, tensors, deltas, _ = world(rng)
    if kind == "kfac":
        factors = {k: (spd(D_IN, rng), spd(D_OUT, rng)) for k in ("upper", "rev", "cost")}
        containers = {k: KFACFisher(t(a), t(g)) for k, (a, g) in factors.items()}
        dense = {k: np.kron(damp(a, EPS), damp(g, EPS)) for k, (a, g) in factors.items()}
    else:
        diags = {k: rng.uniform(0.1, 2.0, (D_OUT, D_IN)) for k in ("upper", "rev", "cost")}
        containers = {k: DiagFisher(t(d)) for k, d in diags.items()}
        dense = {k: np.diag(vec(d + EPS * d.mean())) for k, d in diags.items()}
    files = {k: write(tmp_path / f"{k}.safetensors", f, kind) for k, f in containers.items()}
    result, session = merged(
        tmp_path, base, tensors,
        {"project": "utility", "cost_fisher": files["cost"], "select": select, select if select
         != "soft" else "rho": value, "damping": EPS, "scale": 2.0},
        {"upper": {"gain_fisher": files["upper"]}, "rev": {"gain_fisher": files["rev"]}},
    )  # fmt: skip
    project = soft_reference if select == "soft" else ratio_reference
    projected = {k: project(deltas[i], dense[k], dense["cost"], value)
                 for i, k in ((1, "upper"), (2, "rev"))}  # fmt: skip
    # task arithmetic of the projected utilities, plus the (unprojected) safety delta × scale
    expected = base.numpy() + 0.5 * projected["upper"] + projected["rev"] + 2.0 * deltas[0]
    np.testing.assert_allclose(result.tensor.numpy(), expected, atol=1e-9)
    assert result.diagnostics["action"] == "safety_unprojected"
    summary = session.summary()["utility"]
    for key in ("upper", "rev"):
        record = result.diagnostics["utility"][key]
        f_g = dense[key]
        delta, kept = vec(deltas[1 if key == "upper" else 2]), vec(projected[key])
        assert record["gain_kept_fraction"] == pytest.approx(
            kept @ f_g @ kept / (delta @ f_g @ delta), rel=1e-8
        )
        cost_kept = kept @ dense["cost"] @ kept / (delta @ dense["cost"] @ delta)
        assert summary[key]["safety_disturbance_removed"] == pytest.approx(1 - cost_kept, rel=1e-8)


def test_both_sides_and_the_safety_side_alone(tmp_path):
    rng = np.random.default_rng(5)
    base, tensors, deltas, _ = world(rng)
    pairs = {k: (spd(D_IN, rng), spd(D_OUT, rng)) for k in ("upper", "rev", "cost", "harm", "ben")}
    files = {
        k: write(tmp_path / f"{k}.safetensors", KFACFisher(t(a), t(g)), "kfac",
                 {"harm": "refusal", "ben": "kl", "cost": "kl"}.get(k, "lm"))
        for k, (a, g) in pairs.items()
    }  # fmt: skip
    dense = {k: np.kron(damp(a, EPS), damp(g, EPS)) for k, (a, g) in pairs.items()}
    common = {"select": "soft", "rho": 1.0, "damping": EPS}
    per_model = {"upper": {"gain_fisher": files["upper"]}, "rev": {"gain_fisher": files["rev"]}}
    both, _ = merged(
        tmp_path, base, tensors,
        {**common, "project": "both", "harm_fisher": files["harm"],
         "benign_fisher": files["ben"], "cost_fisher": files["cost"]},
        per_model,
    )  # fmt: skip
    expected = (
        base.numpy()
        + 0.5 * soft_reference(deltas[1], dense["upper"], dense["cost"], 1.0)
        + soft_reference(deltas[2], dense["rev"], dense["cost"], 1.0)
        + soft_reference(deltas[0], dense["harm"], dense["ben"], 1.0)
    )
    np.testing.assert_allclose(both.tensor.numpy(), expected, atol=1e-9)
    assert both.diagnostics["action"] == "projected" and set(both.diagnostics["utility"]) == {
        "upper",
        "rev",
    }
    # the default side is the safety patch, as before the dual existed: the same weights
    shared = {**common, "harm_fisher": files["harm"], "benign_fisher": files["ben"]}
    default, _ = merged(tmp_path, base, tensors, shared, {})
    explicit, _ = merged(tmp_path, base, tensors, {**shared, "project": "safety"}, {})
    assert torch.equal(default.tensor, explicit.tensor)
    assert "utility" not in default.diagnostics


def test_single_fisher_utility_side_keeps_what_the_cost_penalises_least(tmp_path):
    rng = np.random.default_rng(8)
    base, tensors, deltas, _ = world(rng)
    a, g = spd(D_IN, rng), spd(D_OUT, rng)
    cost = write(tmp_path / "cost.safetensors", KFACFisher(t(a), t(g)), "kfac", "kl")
    result, _ = merged(
        tmp_path, base, tensors,
        {"project": "utility", "cost_fisher": cost, "select": "soft", "rho": 1.0,
         "damping": EPS},
        {}, method="sst_single_fisher",
    )  # fmt: skip
    identity = (1 + EPS) ** 2 * np.eye(D_OUT * D_IN)  # I ⊗ I, damped like any factor
    f_c = np.kron(damp(a, EPS), damp(g, EPS))
    expected = (
        base.numpy()
        + 0.5 * soft_reference(deltas[1], identity, f_c, 1.0)
        + soft_reference(deltas[2], identity, f_c, 1.0)
        + deltas[0]
    )
    np.testing.assert_allclose(result.tensor.numpy(), expected, atol=1e-9)


def test_lora_dual_equals_kfac_dual_in_the_joint_subspace(tmp_path):
    rng = np.random.default_rng(3)
    r = 2
    base, tensors, _, (basis_out, basis_in) = world(rng, rank=r)
    u, v = basis_out[:, :r], basis_in[:, :r]

    def block(basis, dim):  # span(first r columns) is an invariant subspace
        return basis @ scipy.linalg.block_diag(spd(r, rng), spd(dim - r, rng)) @ basis.T

    full = {k: (block(basis_in, D_IN), block(basis_out, D_OUT)) for k in ("upper", "rev", "cost")}
    kfac_files = {k: write(tmp_path / f"k{k}.safetensors", KFACFisher(t(a), t(g)), "kfac")
                  for k, (a, g) in full.items()}  # fmt: skip
    lora_files = {
        k: write(tmp_path / f"l{k}.safetensors", LoRAFisher(
            t(u), t(v), t(v.T @ a @ v), t(u.T @ g @ u), A_trace=float(np.trace(a)),
            G_trace=float(np.trace(g))), "lora")
        for k, (a, g) in full.items()
    }  # fmt: skip
    results = []
    for files in (kfac_files, lora_files):
        result, _ = merged(
            tmp_path, base, tensors,
            {"project": "utility", "cost_fisher": files["cost"], "select": "soft", "rho": 0.5,
             "damping": EPS},
            {"upper": {"gain_fisher": files["upper"]}, "rev": {"gain_fisher": files["rev"]}},
        )  # fmt: skip
        results.append(result.tensor.numpy())
    np.testing.assert_allclose(results[1], results[0], atol=1e-10)


def test_bad_dual_inputs_fail_clearly(tmp_path):
    rng = np.random.default_rng(1)
    base, tensors, _, _ = world(rng)
    kfac = write(tmp_path / "k.safetensors", KFACFisher(t(spd(D_IN, rng)), t(spd(D_OUT, rng))),
                 "kfac")  # fmt: skip
    diag = write(tmp_path / "d.safetensors", DiagFisher(t(rng.uniform(0.1, 1, (D_OUT, D_IN)))),
                 "diag")  # fmt: skip
    shared = {"project": "utility", "cost_fisher": kfac}
    with pytest.raises(FisherFileError, match="rev: a utility input needs its gain_fisher"):
        merged(tmp_path, base, tensors, shared, {"upper": {"gain_fisher": kfac}})
    with pytest.raises(FisherFileError, match="different Fisher kinds"):
        merged(tmp_path, base, tensors, shared,
               {"upper": {"gain_fisher": kfac}, "rev": {"gain_fisher": diag}})  # fmt: skip
    with pytest.raises(SSTError, match="needs the parameter 'cost_fisher'"):
        merged(tmp_path, base, tensors, {"project": "both", "harm_fisher": kfac,
                                         "benign_fisher": kfac}, {})  # fmt: skip
    with pytest.raises(SSTError, match="cost_fisher does not apply with project: safety"):
        merged(tmp_path, base, tensors, {"harm_fisher": kfac, "benign_fisher": kfac,
                                         "cost_fisher": kfac}, {})  # fmt: skip
    with pytest.raises(FisherFileError, match="gain_fisher only applies"):
        merged(tmp_path, base, tensors, {"harm_fisher": kfac, "benign_fisher": kfac},
               {"upper": {"gain_fisher": kfac}})  # fmt: skip
    with pytest.raises(SSTError, match="project: unknown value 'utilities'"):
        parse_shared("sst_merge", {"project": "utilities", "cost_fisher": kfac})
    # a gain Fisher of another adapter subspace than the cost Fisher (lora kind)
    u1, v1 = (np.linalg.qr(rng.standard_normal((d, 2)))[0] for d in (D_OUT, D_IN))
    u2 = np.linalg.qr(rng.standard_normal((D_OUT, 2)))[0]

    def lora(u, v):
        return LoRAFisher(t(u), t(v), t(spd(2, rng)), t(spd(2, rng)))

    cost = write(tmp_path / "lc.safetensors", lora(u1, v1), "lora")
    other = write(tmp_path / "lo.safetensors", lora(u2, v1), "lora")
    with pytest.raises(SSTError, match="different adapter subspaces"):
        merged(tmp_path, base, tensors, {"project": "utility", "cost_fisher": cost},
               {"upper": {"gain_fisher": other}, "rev": {"gain_fisher": cost}})  # fmt: skip
