"""Host-neutral checks (``sst_merge_plugin.method.checks``) on their own: the rounding
allowance of the subspace-residual bound, against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sst_merge_plugin.method.checks import MAX_SUBSPACE_RESIDUAL, outside_subspace


def residual_outside(delta: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """``‖Δ − U UᵀΔ V Vᵀ‖/‖Δ‖`` in float64 (numpy)."""
    inside = u @ (u.T @ delta @ v) @ v.T
    return float(np.linalg.norm(delta - inside) / np.linalg.norm(delta))


def lora_weights(rng: np.random.Generator, rank: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A 256×128 base weight (std 0.02) and a rank-``rank`` update about 1/200 of its norm —
    the ratio of a trained SmolLM2-135M safety LoRA (``‖W_s‖/‖ΔW‖`` up to 195)."""
    base = 0.02 * rng.standard_normal((256, 128))
    update = rng.standard_normal((256, rank)) @ rng.standard_normal((rank, 128))
    return base, update * (np.linalg.norm(base) / np.linalg.norm(update) / 200)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rounding_is_allowed_and_another_subspace_is_not(dtype: torch.dtype) -> None:
    """The merged weights in ``dtype``: with the update's own subspace the residual is rounding
    noise (in bfloat16 far above the 5 % bound) and passes; another adapter's subspace fails."""
    rng = np.random.default_rng(0)
    base, update = lora_weights(rng)
    w0 = torch.from_numpy(base).to(dtype)
    ws = torch.from_numpy(base + update).to(dtype)
    delta = ws.double().numpy() - w0.double().numpy()
    u, _, vh = np.linalg.svd(update)
    own = residual_outside(delta, u[:, :8], vh[:8].T)
    _, other = lora_weights(rng)
    u2, _, vh2 = np.linalg.svd(other)
    foreign = residual_outside(delta, u2[:, :8], vh2[:8].T)
    if dtype == torch.bfloat16:
        assert own > 5 * MAX_SUBSPACE_RESIDUAL  # a fixed bound alone would reject it
    assert outside_subspace(own, w0, ws) <= MAX_SUBSPACE_RESIDUAL
    assert foreign > 0.9 and outside_subspace(foreign, w0, ws) > MAX_SUBSPACE_RESIDUAL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rounding_allowance_matches_the_ulp_formula(dtype: torch.dtype) -> None:
    """``outside_subspace`` = ``sqrt(r² − 2·(E₀ + E_s)/‖ΔW‖²)``, ``E = Σ ulp²/12`` with ulp from
    numpy's ``spacing`` (bfloat16: float32 spacing × 2¹⁶); values held in float32 that are
    bfloat16 numbers count as bfloat16."""
    rng = np.random.default_rng(1)
    base, update = lora_weights(rng)
    base[0, :5] = 0.0  # exact zeros carry no rounding
    w0 = torch.from_numpy(base).to(dtype)
    ws = torch.from_numpy(base + update).to(dtype)

    def energy(tensor: torch.Tensor) -> float:
        values = tensor.float().numpy()
        spacing = np.spacing(np.abs(values)).astype(np.float64)
        if dtype == torch.float16:
            spacing = np.spacing(np.abs(tensor.numpy())).astype(np.float64)
        elif dtype == torch.bfloat16:
            spacing *= 2.0**16
        return float((np.where(values != 0, spacing, 0.0) ** 2).sum()) / 12

    delta = ws.double().numpy() - w0.double().numpy()
    noise = (energy(w0) + energy(ws)) / float((delta**2).sum())
    for residual in (0.3, 0.6, 0.9):
        expected = np.sqrt(max(0.0, residual**2 - 2 * noise))
        assert outside_subspace(residual, w0, ws) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if dtype == torch.bfloat16:  # the same values in float32 tensors are still bfloat16 numbers
        as_float = outside_subspace(0.6, w0.float(), ws.float())
        assert as_float == pytest.approx(outside_subspace(0.6, w0, ws), rel=1e-12)


def test_rounding_energy_of_a_large_tensor_is_a_close_seeded_estimate() -> None:
    """Above ROUNDING_SAMPLE values the allowance comes from a seeded sample: within 2 % of the
    full sum (numpy's spacing), and the same on every call."""
    rng = np.random.default_rng(2)
    base = 0.02 * rng.standard_normal((1536, 576))
    w0 = torch.from_numpy(base).to(torch.bfloat16)
    ws = torch.from_numpy(base * 1.01).to(torch.bfloat16)
    spacing = lambda t: np.spacing(np.abs(t.float().numpy())).astype(np.float64) * 2.0**16  # noqa: E731
    full = sum(float((spacing(t) ** 2).sum()) / 12 for t in (w0, ws))
    norm = float(((ws.double() - w0.double()) ** 2).sum())
    residual = 0.9
    exact = np.sqrt(residual**2 - 2 * full / norm)
    estimate = outside_subspace(residual, w0, ws)
    assert estimate == outside_subspace(residual, w0, ws)
    assert estimate == pytest.approx(exact, rel=0.02)
