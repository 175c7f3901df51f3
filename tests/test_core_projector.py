"""The SST projector against dense references built with numpy/scipy on the full Kronecker Fisher.

Convention: column-major ``vec``, so ``(A ⊗ G) vec(X) = vec(G X A)`` and the dense Fisher of a
K-FAC pair is ``np.kron(A, G)``. The references below never call the plugin's solver.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from sst_merge_plugin.core import (
    DiagFisher,
    KFACFisher,
    LoRAFisher,
    Selection,
    project_patch,
    project_single_fisher,
)
from sst_merge_plugin.core.errors import FisherValidationError, SelectionError, SolverError
from sst_merge_plugin.core.gevp import GEVPCache

D_OUT, D_IN = 6, 5


def spd(dim: int, rng: np.random.Generator, samples: int | None = None) -> np.ndarray:
    x = rng.standard_normal((dim, samples or 3 * dim))
    scales = np.exp(rng.uniform(-1.5, 1.5, size=dim))[:, None]
    x = scales * x
    return x @ x.T / x.shape[1]


def vec(matrix: np.ndarray) -> np.ndarray:
    return matrix.reshape(-1, order="F")


def unvec(vector: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return vector.reshape(shape, order="F")


def damp(matrix: np.ndarray, eps: float) -> np.ndarray:
    return matrix + eps * np.trace(matrix) / matrix.shape[0] * np.eye(matrix.shape[0])


def t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    factors = {
        "A_h": spd(D_IN, rng),
        "G_h": spd(D_OUT, rng),
        "A_b": spd(D_IN, rng),
        "G_b": spd(D_OUT, rng),
    }
    patch = rng.standard_normal((D_OUT, D_IN))
    return factors, patch


def dense_pencil(factors: dict[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    f_h = np.kron(damp(factors["A_h"], eps), damp(factors["G_h"], eps))
    f_b = np.kron(damp(factors["A_b"], eps), damp(factors["G_b"], eps))
    return f_h, f_b


def kfac(factors, side):
    return KFACFisher(t(factors[f"A_{side}"]), t(factors[f"G_{side}"]))


def dense_ratio_projection(patch, f_h, f_b, tau):
    """Reference: eigenvectors of the full pencil, keep normalised λ ≥ τ, reconstruct."""
    lam, vecs = scipy.linalg.eigh(f_h, f_b)  # vecsᵀ f_b vecs = I
    c = np.trace(f_h) / np.trace(f_b)
    coords = vecs.T @ f_b @ vec(patch)
    keep = lam / c >= tau
    return unvec(vecs[:, keep] @ coords[keep], patch.shape), lam


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_kfac_spectrum_matches_dense_scipy(pair, eps):
    factors, patch = pair
    f_h, f_b = dense_pencil(factors, eps)
    res = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), Selection.create("all"), damping=eps
    )
    lam_ref = np.sort(scipy.linalg.eigh(f_h, f_b, eigvals_only=True))
    c = np.trace(f_h) / np.trace(f_b)
    assert res.diagnostics.trace_ratio == pytest.approx(c, rel=1e-12)
    assert res.diagnostics.n_coordinates == D_OUT * D_IN
    assert res.diagnostics.lambda_max == pytest.approx(lam_ref[-1] / c, rel=1e-10)
    assert res.diagnostics.lambda_min == pytest.approx(lam_ref[0] / c, rel=1e-10)
    # "all" keeps the whole patch
    np.testing.assert_allclose(res.patch.numpy(), patch, atol=1e-10)
    assert res.diagnostics.gain_kept_fraction == pytest.approx(1.0, rel=1e-10)


def test_kronecker_eigenvectors_solve_the_full_problem(pair):
    from sst_merge_plugin.core.gevp import solve_dense

    factors, _ = pair
    g = solve_dense(t(factors["G_h"]), t(factors["G_b"]))
    a = solve_dense(t(factors["A_h"]), t(factors["A_b"]))
    f_h, f_b = dense_pencil(factors, 0.0)
    lam_ref = np.sort(scipy.linalg.eigh(f_h, f_b, eigvals_only=True))[::-1]
    lam = np.sort(np.outer(g.values.numpy(), a.values.numpy()).reshape(-1))[::-1]
    np.testing.assert_allclose(lam, lam_ref, rtol=1e-10)
    for i in range(D_OUT):
        for j in range(D_IN):
            v = np.kron(a.vectors[:, j].numpy(), g.vectors[:, i].numpy())
            lam_ij = float(g.values[i] * a.values[j])
            np.testing.assert_allclose(f_h @ v, lam_ij * f_b @ v, atol=1e-9 * lam_ref[0])
            assert v @ f_b @ v == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_ratio_projection_equals_dense_reference(pair, tau):
    factors, patch = pair
    eps = 1e-2
    f_h, f_b = dense_pencil(factors, eps)
    ref, _ = dense_ratio_projection(patch, f_h, f_b, tau)
    res = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), Selection.create("ratio", ratio=tau),
        damping=eps,
    )  # fmt: skip
    np.testing.assert_allclose(res.patch.numpy(), ref, atol=1e-10)
    # gain / cost accounting equals the dense quadratic forms
    out = vec(res.patch.numpy())
    d = res.diagnostics
    assert d.gain_total == pytest.approx(vec(patch) @ f_h @ vec(patch), rel=1e-10)
    assert d.cost_total == pytest.approx(vec(patch) @ f_b @ vec(patch), rel=1e-10)
    assert d.gain_kept == pytest.approx(out @ f_h @ out, rel=1e-9)
    assert d.cost_kept == pytest.approx(out @ f_b @ out, rel=1e-9)
    assert 0 < d.kept < D_OUT * D_IN


@pytest.mark.parametrize(
    "selection",
    [
        Selection.create("top_k", k=4),
        Selection.create("ratio", ratio=1.0),
        Selection.create("energy", energy=0.8),
    ],
)
def test_hard_projection_is_idempotent_and_benign_orthogonal(pair, selection):
    factors, patch = pair
    eps = 1e-2
    _, f_b = dense_pencil(factors, eps)
    harm, benign = kfac(factors, "h"), kfac(factors, "b")
    once = project_patch(t(patch), harm, benign, selection, damping=eps)
    if selection.mode == "energy":  # the energy set of the projected patch is the same set
        selection = Selection.create("ratio", ratio=once.diagnostics.lambda_min_kept * (1 - 1e-9))
    twice = project_patch(once.patch, harm, benign, selection, damping=eps)
    np.testing.assert_allclose(twice.patch.numpy(), once.patch.numpy(), atol=1e-10)
    kept = vec(once.patch.numpy())
    residual = vec(patch) - kept
    # ⟨P ΔW, ΔW − P ΔW⟩_{F_b} = 0 (relative to the norms involved)
    assert abs(kept @ f_b @ residual) < 1e-10 * (vec(patch) @ f_b @ vec(patch))
    # so costs add up: cost(ΔW) = cost(PΔW) + cost(ΔW − PΔW)
    assert once.diagnostics.cost_total == pytest.approx(
        kept @ f_b @ kept + residual @ f_b @ residual, rel=1e-10
    )


def test_top_k_keeps_the_k_largest_lambda_coordinates(pair):
    factors, patch = pair
    eps = 1e-2
    f_h, f_b = dense_pencil(factors, eps)
    lam, vecs = scipy.linalg.eigh(f_h, f_b)
    top = np.argsort(lam)[::-1][:3]
    coords = vecs.T @ f_b @ vec(patch)
    ref = unvec(vecs[:, top] @ coords[top], patch.shape)
    res = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), Selection.create("top_k", k=3),
        damping=eps,
    )  # fmt: skip
    np.testing.assert_allclose(res.patch.numpy(), ref, atol=1e-10)
    assert res.diagnostics.kept == 3


def test_energy_is_the_smallest_prefix_reaching_the_fraction(pair):
    factors, patch = pair
    eps = 1e-2
    f_h, f_b = dense_pencil(factors, eps)
    lam, vecs = scipy.linalg.eigh(f_h, f_b)
    order = np.argsort(lam)[::-1]
    coords = vecs.T @ f_b @ vec(patch)
    cum = np.cumsum((lam * coords**2)[order]) / (vec(patch) @ f_h @ vec(patch))
    for energy in (0.3, 0.7, 0.95):
        n = int(np.searchsorted(cum, energy) + 1)
        res = project_patch(
            t(patch), kfac(factors, "h"), kfac(factors, "b"),
            Selection.create("energy", energy=energy), damping=eps,
        )  # fmt: skip
        assert res.diagnostics.kept == n
        assert res.diagnostics.gain_kept_fraction >= energy
        assert cum[n - 2] < energy if n >= 2 else True


@pytest.mark.parametrize("rho", [0.1, 1.0, 10.0])
def test_soft_equals_the_closed_form_minimiser(pair, rho):
    factors, patch = pair
    eps = 1e-2
    f_h, f_b = dense_pencil(factors, eps)
    c = np.trace(f_h) / np.trace(f_b)
    # argmin ‖φ − ΔW‖²_{F_h} + ρ c ‖φ‖²_{F_b}  ⇔  (F_h + ρ c F_b) φ = F_h ΔW
    ref = unvec(np.linalg.solve(f_h + rho * c * f_b, f_h @ vec(patch)), patch.shape)
    res = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), Selection.create("soft", rho=rho),
        damping=eps,
    )  # fmt: skip
    np.testing.assert_allclose(res.patch.numpy(), ref, atol=1e-9)

    def objective(phi):
        d = vec(phi - patch)
        return d @ f_h @ d + rho * c * vec(phi) @ f_b @ vec(phi)

    rng = np.random.default_rng(1)
    for _ in range(5):  # and it is a minimum
        assert objective(res.patch.numpy()) <= objective(
            ref + 1e-3 * rng.standard_normal(ref.shape)
        )


def test_lora_kind_equals_kfac_kind_for_patches_in_the_adapter_subspace():
    rng = np.random.default_rng(3)
    r = 2
    basis_out = np.linalg.qr(rng.standard_normal((D_OUT, D_OUT)))[0]
    basis_in = np.linalg.qr(rng.standard_normal((D_IN, D_IN)))[0]
    u, v = basis_out[:, :r], basis_in[:, :r]

    def block_factor(basis, dim):  # span(first r columns) is an invariant subspace
        inner = scipy.linalg.block_diag(spd(r, rng), spd(dim - r, rng))
        return basis @ inner @ basis.T

    full = {
        "A_h": block_factor(basis_in, D_IN),
        "G_h": block_factor(basis_out, D_OUT),
        "A_b": block_factor(basis_in, D_IN),
        "G_b": block_factor(basis_out, D_OUT),
    }
    patch = u @ rng.standard_normal((r, r)) @ v.T

    def lora(side):
        return LoRAFisher(
            t(u), t(v), t(v.T @ full[f"A_{side}"] @ v), t(u.T @ full[f"G_{side}"] @ u),
            A_trace=float(np.trace(full[f"A_{side}"])), G_trace=float(np.trace(full[f"G_{side}"])),
        )  # fmt: skip

    for selection in (
        Selection.create("ratio", ratio=1.0),
        Selection.create("soft", rho=0.5),
        Selection.create("energy", energy=0.9),
        Selection.create("all"),
    ):
        dense = project_patch(t(patch), kfac(full, "h"), kfac(full, "b"), selection, damping=1e-2)
        low = project_patch(t(patch), lora("h"), lora("b"), selection, damping=1e-2)
        np.testing.assert_allclose(low.patch.numpy(), dense.patch.numpy(), atol=1e-10)
        assert low.diagnostics.gain_kept == pytest.approx(dense.diagnostics.gain_kept, rel=1e-9)
        assert low.diagnostics.cost_kept == pytest.approx(dense.diagnostics.cost_kept, rel=1e-9)
        assert low.diagnostics.trace_ratio == pytest.approx(dense.diagnostics.trace_ratio)
        left, right = low.factors
        assert left.shape == (D_OUT, r) and right.shape == (r, D_IN)
        np.testing.assert_allclose((left @ right).numpy(), low.patch.numpy(), atol=1e-12)
        assert low.diagnostics.subspace_residual < 1e-12


def test_lora_kind_drops_the_part_outside_the_subspace_and_reports_it():
    rng = np.random.default_rng(4)
    u = np.linalg.qr(rng.standard_normal((D_OUT, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((D_IN, 2)))[0]
    fisher = LoRAFisher(t(u), t(v), t(spd(2, rng)), t(spd(2, rng)))
    patch = rng.standard_normal((D_OUT, D_IN))
    res = project_patch(t(patch), fisher, fisher, Selection.create("all"))
    inside = u @ u.T @ patch @ v @ v.T
    np.testing.assert_allclose(res.patch.numpy(), inside, atol=1e-12)
    expected = np.linalg.norm(patch - inside) / np.linalg.norm(patch)
    assert res.diagnostics.subspace_residual == pytest.approx(expected, rel=1e-10)


def test_krylov_top_k_agrees_with_dense_path():
    rng = np.random.default_rng(5)
    d_out, d_in = 160, 120
    factors = {
        "A_h": spd(d_in, rng),
        "G_h": spd(d_out, rng),
        "A_b": spd(d_in, rng),
        "G_b": spd(d_out, rng),
    }
    patch = rng.standard_normal((d_out, 8)) @ rng.standard_normal((8, d_in))  # rank 8
    selection = Selection.create("top_k", k=6)
    dense = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), selection, solver="dense"
    )
    krylov = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), selection, solver="krylov"
    )
    np.testing.assert_allclose(krylov.patch.numpy(), dense.patch.numpy(), atol=1e-8)
    assert krylov.diagnostics.gain_kept == pytest.approx(dense.diagnostics.gain_kept, rel=1e-8)
    assert krylov.diagnostics.gain_total == pytest.approx(dense.diagnostics.gain_total, rel=1e-10)


def test_krylov_solver_matches_scipy_leading_eigenpairs():
    from sst_merge_plugin.core.gevp import solve_top_k

    rng = np.random.default_rng(6)
    gain, cost = spd(300, rng), spd(300, rng)
    pairs = solve_top_k(t(gain), t(cost), 10)
    ref = scipy.linalg.eigh(gain, cost, eigvals_only=True)[::-1][:10]
    np.testing.assert_allclose(pairs.values.numpy(), ref, rtol=1e-9)
    x = pairs.vectors.numpy()
    np.testing.assert_allclose(x.T @ cost @ x, np.eye(10), atol=1e-9)
    np.testing.assert_allclose(gain @ x, cost @ x * pairs.values.numpy(), atol=1e-7 * ref[0])


def test_singular_benign_fisher_needs_damping(pair):
    factors, patch = pair
    rng = np.random.default_rng(7)
    singular = dict(factors, G_b=spd(D_OUT, rng, samples=2))  # rank 2 < 6
    harm, benign = kfac(singular, "h"), kfac(singular, "b")
    with pytest.raises(SolverError, match=r"singular.*damping > 0"):
        project_patch(t(patch), harm, benign, Selection.create("all"), damping=0.0)
    with pytest.raises(SolverError, match="damping > 0"):
        project_patch(t(patch), harm, benign, Selection.create("top_k", k=2), damping=0.0,
                      solver="krylov")  # fmt: skip
    res = project_patch(t(patch), harm, benign, Selection.create("ratio", ratio=1.0), damping=1e-3)
    assert torch.isfinite(res.patch).all()
    f_h, f_b = dense_pencil(singular, 1e-3)
    ref, _ = dense_ratio_projection(patch, f_h, f_b, 1.0)
    np.testing.assert_allclose(res.patch.numpy(), ref, atol=1e-8 * np.abs(ref).max())


def test_diag_kind_matches_elementwise_reference():
    rng = np.random.default_rng(8)
    f_h = rng.exponential(size=(D_OUT, D_IN))
    f_b = rng.exponential(size=(D_OUT, D_IN))
    patch = rng.standard_normal((D_OUT, D_IN))
    eps = 1e-2
    dh, db = f_h + eps * f_h.mean(), f_b + eps * f_b.mean()
    lam_norm = (dh / db) / (dh.sum() / db.sum())
    res = project_patch(
        t(patch), DiagFisher(t(f_h)), DiagFisher(t(f_b)), Selection.create("ratio", ratio=1.2),
        damping=eps,
    )  # fmt: skip
    np.testing.assert_allclose(res.patch.numpy(), np.where(lam_norm >= 1.2, patch, 0), atol=0)
    soft = project_patch(
        t(patch), DiagFisher(t(f_h)), DiagFisher(t(f_b)), Selection.create("soft", rho=0.7),
        damping=eps,
    )  # fmt: skip
    np.testing.assert_allclose(soft.patch.numpy(), patch * lam_norm / (lam_norm + 0.7), rtol=1e-12)
    kept = res.patch.numpy()
    assert res.diagnostics.gain_kept == pytest.approx((dh * kept**2).sum(), rel=1e-12)
    assert res.diagnostics.cost_kept == pytest.approx((db * kept**2).sum(), rel=1e-12)
    with pytest.raises(SolverError, match="zero entries"):
        zero = f_b.copy()
        zero[0, 0] = 0
        project_patch(t(patch), DiagFisher(t(f_h)), DiagFisher(t(zero)), Selection.create("all"),
                      damping=0.0)  # fmt: skip


def test_single_fisher_projects_onto_top_eigenvectors_of_harm_alone(pair):
    factors, patch = pair
    eps = 1e-2
    f_h = np.kron(damp(factors["A_h"], eps), damp(factors["G_h"], eps))
    lam, vecs = np.linalg.eigh(f_h)
    top = vecs[:, np.argsort(lam)[::-1][:5]]
    ref = unvec(top @ (top.T @ vec(patch)), patch.shape)
    res = project_single_fisher(
        t(patch), kfac(factors, "h"), Selection.create("top_k", k=5), damping=eps
    )
    np.testing.assert_allclose(res.patch.numpy(), ref, atol=1e-10)
    # it differs from the two-Fisher projection: the benign Fisher changes the kept directions
    two = project_patch(
        t(patch), kfac(factors, "h"), kfac(factors, "b"), Selection.create("top_k", k=5),
        damping=eps,
    )  # fmt: skip
    assert np.abs(two.patch.numpy() - ref).max() > 1e-3


def test_gevp_cache_solves_shared_factors_once(pair):
    factors, patch = pair
    cache = GEVPCache()
    harm, benign = kfac(factors, "h"), kfac(factors, "b")
    for _ in range(3):  # e.g. q/k/v: identical factors under three names
        project_patch(t(patch), harm, benign, Selection.create("ratio", ratio=1.0), cache=cache)
    assert cache.misses == 2  # one G pencil, one A pencil
    assert cache.hits == 4


def test_projection_is_deterministic_and_keeps_dtype(pair):
    factors, patch = pair
    p32 = t(patch).float()
    a = project_patch(p32, kfac(factors, "h"), kfac(factors, "b"), Selection.create("top_k", k=3))
    b = project_patch(p32, kfac(factors, "h"), kfac(factors, "b"), Selection.create("top_k", k=3))
    assert a.patch.dtype == torch.float32
    assert torch.equal(a.patch, b.patch)


def test_bad_inputs_raise_specific_errors(pair):
    factors, patch = pair
    harm, benign = kfac(factors, "h"), kfac(factors, "b")
    with pytest.raises(FisherValidationError, match="patch shape"):
        project_patch(t(patch.T.copy()), harm, benign, Selection.create("all"))
    bad = patch.copy()
    bad[1, 1] = np.nan
    with pytest.raises(FisherValidationError, match="NaN"):
        project_patch(t(bad), harm, benign, Selection.create("all"))
    other = KFACFisher(t(factors["A_h"]), t(spd(D_OUT + 1, np.random.default_rng(0))))
    with pytest.raises(FisherValidationError, match="shape"):
        project_patch(t(patch), harm, other, Selection.create("all"))
    with pytest.raises(FisherValidationError, match="'kfac' but benign Fisher is 'diag'"):
        project_patch(t(patch), harm, DiagFisher(t(np.ones_like(patch))), Selection.create("all"))
    with pytest.raises(FisherValidationError, match="damping"):
        project_patch(t(patch), harm, benign, Selection.create("all"), damping=-1)


@pytest.mark.parametrize(
    ("mode", "params", "message"),
    [
        ("topk", {}, "unknown select mode"),
        ("top_k", {}, "needs the parameter 'k'"),
        ("top_k", {"k": -1}, "non-negative integer"),
        ("top_k", {"k": 2, "rho": 1.0}, "does not take"),
        ("energy", {"energy": 1.5}, r"\(0, 1\]"),
        ("soft", {"rho": 0.0}, "rho must be > 0"),
        ("ratio", {"ratio": -0.1}, "ratio must be >= 0"),
    ],
)
def test_selection_validation(mode, params, message):
    with pytest.raises(SelectionError, match=message):
        Selection.create(mode, **params)


def test_float32_low_rank_patch_takes_the_factored_path_and_matches_the_dense_reference():
    """A float32 product ``B @ A`` is rank r only up to its rounding; the factored kfac path
    (accepted at that precision) agrees with the dense float64 reference on the same patch."""
    from sst_merge_plugin.core.projector import low_rank_factors

    rng = np.random.default_rng(8)
    d_out, d_in, r = 120, 100, 4
    factors = {"A_h": spd(d_in, rng), "G_h": spd(d_out, rng),
               "A_b": spd(d_in, rng), "G_b": spd(d_out, rng)}  # fmt: skip
    patch32 = t(rng.standard_normal((d_out, r))).float() @ t(rng.standard_normal((r, d_in))).float()
    left, right = low_rank_factors(patch32)
    assert right is not None and left.dtype == torch.float64
    assert low_rank_factors(patch32.double())[1] is None  # not rank r to 1e-9
    assert low_rank_factors(t(rng.standard_normal((d_out, d_in))).float())[1] is None
    # the reference: the same patch in float64, which is not low-rank to 1e-9 and so takes the
    # dense path (checked against the dense Kronecker pencil by the tests above)
    for selection in (Selection.create("top_k", k=5), Selection.create("ratio", ratio=1.0)):
        res = project_patch(patch32, kfac(factors, "h"), kfac(factors, "b"), selection)
        ref = project_patch(patch32.double(), kfac(factors, "h"), kfac(factors, "b"), selection)
        assert res.patch.dtype == torch.float32
        np.testing.assert_allclose(res.patch.numpy(), ref.patch.numpy(), rtol=0, atol=1e-5)
        for field in ("gain_total", "cost_total", "gain_kept", "cost_kept"):
            expected = getattr(ref.diagnostics, field)
            assert getattr(res.diagnostics, field) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lora_kind_streamed_in_row_blocks_equals_the_dense_formulas(monkeypatch, dtype):
    """Coordinates, residual and output computed block by block (forced: 7 rows per block)
    equal ``X = Uᵀ ΔW V``, ``‖ΔW − U X Vᵀ‖/‖ΔW‖`` and ``(U Q (M⊙C)) (Pᵀ Vᵀ)`` on the whole."""
    import sst_merge_plugin.core.projector as projector

    rng = np.random.default_rng(9)
    d_out, d_in, r = 40, 30, 3
    u = np.linalg.qr(rng.standard_normal((d_out, r)))[0]
    v = np.linalg.qr(rng.standard_normal((d_in, r)))[0]
    harm = LoRAFisher(t(u), t(v), t(spd(r, rng)), t(spd(r, rng)))
    benign = LoRAFisher(t(u), t(v), t(spd(r, rng)), t(spd(r, rng)))
    patch = t(rng.standard_normal((d_out, d_in))).to(dtype)
    selection = Selection.create("ratio", ratio=1.0)
    whole = project_patch(patch, harm, benign, selection)
    monkeypatch.setattr(projector, "BLOCK_ENTRIES", 7 * d_in)
    assert len(projector.row_blocks(d_out, d_in)) == 6
    streamed = project_patch(patch, harm, benign, selection)
    p = patch.double().numpy()
    inside = u @ (u.T @ p @ v) @ v.T
    expected = np.linalg.norm(p - inside) / np.linalg.norm(p)
    for res in (whole, streamed):
        assert res.patch.dtype == dtype
        assert res.diagnostics.subspace_residual == pytest.approx(expected, rel=1e-10)
        left, right = (f.double() for f in res.factors)
        product = (u @ (u.T @ left.numpy())) @ (right.numpy() @ v) @ v.T
        np.testing.assert_allclose(res.patch.double().numpy(), product, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(streamed.patch, whole.patch, rtol=1e-12, atol=1e-12)
    assert streamed.diagnostics.gain_kept == pytest.approx(whole.diagnostics.gain_kept, rel=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_krylov_restarts_reach_the_scipy_pairs(depth):
    """Shallow Krylov spaces need many restarts (Ritz vectors and their images carried over)."""
    from sst_merge_plugin.core.gevp import solve_top_k

    rng = np.random.default_rng(10)
    gain, cost = spd(200, rng), spd(200, rng)
    pairs = solve_top_k(t(gain), t(cost), 4, depth=depth, max_restarts=500)
    ref = scipy.linalg.eigh(gain, cost, eigvals_only=True)[::-1][:4]
    np.testing.assert_allclose(pairs.values.numpy(), ref, rtol=1e-9)
    x = pairs.vectors.numpy()
    np.testing.assert_allclose(x.T @ cost @ x, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(gain @ x, cost @ x * pairs.values.numpy(), atol=1e-7 * ref[0])


def test_kfac_dense_projection_is_that_of_the_full_eigh_solution_bit_for_bit():
    """Merged weights must not change from one release to the next, so the dense ``kfac`` path
    of a blockwise selection (``ratio``) on factors of a few hundred dimensions — where a
    partial (tridiagonal, leading-vectors-only) solver would be tempting — is exactly
    ``(Q (M⊙C)) Pᵀ`` with ``Q``, ``P`` from :func:`~sst_merge_plugin.core.gevp.solve_dense`
    (``torch.linalg.eigh``) and ``C = (Qᵀ G_b ΔW)(A_b P)``: ``torch.equal``, not ``allclose``.
    The patch is a rank-4 update stored in float32 (``ΔW = fl32(W0 + B A) − W0``), projected
    as stored."""
    from sst_merge_plugin.core.gevp import solve_dense
    from sst_merge_plugin.core.projector import DEFAULT_DAMPING

    rng = np.random.default_rng(21)
    d_out, d_in, rank = 300, 272, 4
    factors = {"A_h": spd(d_in, rng), "G_h": spd(d_out, rng),
               "A_b": spd(d_in, rng), "G_b": spd(d_out, rng)}  # fmt: skip
    base = t(rng.standard_normal((d_out, d_in))).float()
    update = 1e-3 * t(rng.standard_normal((d_out, rank))) @ t(rng.standard_normal((rank, d_in)))
    delta = (base.double() + update).float().double() - base.double()
    harm, benign = kfac(factors, "h"), kfac(factors, "b")
    result = project_patch(delta, harm, benign, Selection.create("ratio", ratio=1.0))
    h = harm.damped(DEFAULT_DAMPING, dtype=torch.float64)
    b = benign.damped(DEFAULT_DAMPING, dtype=torch.float64)
    g_pairs, a_pairs = solve_dense(h.G, b.G), solve_dense(h.A, b.A)
    q, p = g_pairs.vectors, a_pairs.vectors
    coords = (q.T @ b.G @ delta) @ (b.A @ p)
    normalised = torch.outer(g_pairs.values, a_pairs.values) / (h.trace() / b.trace())
    kept = (normalised >= 1.0).to(coords.dtype) * coords
    assert 0 < int((kept != 0).sum()) < kept.numel()
    assert torch.equal(result.patch, (q @ kept) @ p.T)
