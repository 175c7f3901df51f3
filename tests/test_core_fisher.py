"""Fisher containers: validation on construction, damping, quadratic forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher, relative_damping
from sst_merge_plugin.core.errors import FisherValidationError
from sst_merge_plugin.core.fisher import check_compatible


def spd(dim: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(
        dim, 2 * dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return x @ x.T / (2 * dim)


def orthonormal(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64)).Q


def test_kfac_quadratic_form_equals_dense_kronecker():
    a, g = spd(4, 1), spd(3, 2)
    patch = torch.randn(3, 4, dtype=torch.float64)
    dense = np.kron(a.numpy(), g.numpy())
    v = patch.numpy().reshape(-1, order="F")
    fisher = KFACFisher(a, g)
    assert fisher.weight_shape == (3, 4)
    assert fisher.quadratic_form(patch) == pytest.approx(v @ dense @ v, rel=1e-12)
    assert fisher.trace() == pytest.approx(np.trace(dense), rel=1e-12)


def test_relative_damping_formula():
    f = spd(5)
    damped = relative_damping(f, 0.1)
    expected = f + 0.1 * torch.trace(f) / 5 * torch.eye(5, dtype=f.dtype)
    torch.testing.assert_close(damped, expected)
    # restricted factor damped with full-space trace and dimension: Uᵀ(F + s I)U = UᵀFU + s I
    big = spd(8, 3)
    u = orthonormal(8, 3)
    restricted = relative_damping(u.T @ big @ u, 0.1, trace=float(torch.trace(big)), dim=8)
    torch.testing.assert_close(restricted, u.T @ relative_damping(big, 0.1) @ u)
    # kfac damps each factor; traces scale by (1 + ε) so trace ratios are damping-invariant
    kf = KFACFisher(spd(4, 1), spd(3, 2)).damped(0.2)
    assert kf.trace() == pytest.approx(KFACFisher(spd(4, 1), spd(3, 2)).trace() * 1.2**2)


def test_lora_fisher_quadratic_form_and_traces():
    a, g = spd(6, 1), spd(5, 2)
    u, v = orthonormal(5, 2, 3), orthonormal(6, 2, 4)
    fisher = LoRAFisher(u, v, v.T @ a @ v, u.T @ g @ u, A_trace=float(torch.trace(a)),
                        G_trace=float(torch.trace(g)))  # fmt: skip
    patch = u @ torch.randn(2, 2, dtype=torch.float64) @ v.T
    assert fisher.quadratic_form(patch) == pytest.approx(
        KFACFisher(a, g).quadratic_form(patch), rel=1e-10
    )
    assert fisher.trace() == pytest.approx(KFACFisher(a, g).trace())
    assert fisher.rank == (2, 2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: KFACFisher(spd(3).masked_fill(torch.eye(3, dtype=bool), float("nan")), spd(2)),
            "NaN",
        ),
        (
            lambda: KFACFisher(
                spd(3) + torch.triu(torch.ones(3, 3, dtype=torch.float64), 1), spd(2)
            ),
            "not symmetric",
        ),
        (
            lambda: KFACFisher(spd(3) - 2 * torch.eye(3, dtype=torch.float64), spd(2)),
            "negative|positive semi-definite",
        ),
        (
            lambda: KFACFisher(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64), spd(2)),
            "not positive semi-definite",
        ),
        (lambda: KFACFisher(torch.zeros(3, 3), spd(2)), "is zero"),
        (lambda: KFACFisher(torch.ones(3, 4), spd(2)), "square"),
        (lambda: KFACFisher(torch.ones(3, 3, dtype=torch.int64), spd(2)), "floating-point"),
        (lambda: DiagFisher(-torch.ones(2, 2)), "negative"),
        (lambda: DiagFisher(torch.ones(4)), "2-D"),
        (lambda: DiagFisher(torch.full((2, 2), float("inf"))), "NaN/Inf"),
        (lambda: LoRAFisher(torch.ones(5, 2), orthonormal(6, 2), spd(2), spd(2)), "orthonormal"),
        (
            lambda: LoRAFisher(orthonormal(5, 2), orthonormal(6, 2), spd(3), spd(2)),
            r"expected shape \(2, 2\)",
        ),
        (
            lambda: LoRAFisher(orthonormal(5, 2), orthonormal(6, 2), spd(2), spd(2), A_trace=1e-6),
            "smaller than the trace",
        ),
    ],
)
def test_invalid_factors_are_rejected(make, message):
    with pytest.raises(FisherValidationError, match=message):
        make()


def test_tiny_round_off_asymmetry_is_symmetrised():
    f = spd(4)
    noisy = f.clone()
    noisy[0, 1] += 1e-9
    fisher = KFACFisher(noisy, spd(3))
    torch.testing.assert_close(fisher.A, fisher.A.T, rtol=0, atol=0)


def test_compatibility_checks():
    u, v = orthonormal(5, 2, 1), orthonormal(6, 2, 2)
    base = LoRAFisher(u, v, spd(2), spd(2))
    # same subspace, other basis: compatible
    rot = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    check_compatible(base, LoRAFisher(u @ rot, v, spd(2, 5), spd(2, 6)))
    with pytest.raises(FisherValidationError, match="different adapter subspaces"):
        check_compatible(base, LoRAFisher(orthonormal(5, 2, 9), v, spd(2), spd(2)))
    with pytest.raises(FisherValidationError, match="'lora' but benign Fisher is 'kfac'"):
        check_compatible(base, KFACFisher(spd(6), spd(5)))


def test_identical_factors_are_validated_once(monkeypatch):
    """A Fisher file stores q/k/v's shared input factor once per weight: the second and third
    copies are recognised by content (no second Cholesky); each container keeps its own
    tensor (a file writer refuses tensors that share memory)."""
    import sst_merge_plugin.core.fisher as fisher

    calls = []
    cholesky = torch.linalg.cholesky_ex

    def counting(matrix, *args, **kwargs):
        calls.append(matrix.shape[0])
        return cholesky(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", counting)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 20))
    shared = x @ x.T
    g = [(lambda y: y @ y.T)(rng.standard_normal((4, 9))) for _ in range(3)]
    fishers = [KFACFisher(torch.tensor(shared), torch.tensor(gi)) for gi in g]
    assert calls == [9, 4, 4, 4]  # A checked once, each G once
    for other in fishers[1:]:
        assert torch.equal(other.A, fishers[0].A)
        assert other.A.untyped_storage().data_ptr() != fishers[0].A.untyped_storage().data_ptr()
    changed = shared.copy()
    changed[0, 0] += 1.0
    KFACFisher(torch.tensor(changed), torch.tensor(g[0]))
    assert calls == [9, 4, 4, 4, 9]  # the new A is checked, the known G is not
    bad = -shared
    for _ in range(2):  # a failed check is not remembered
        with pytest.raises(FisherValidationError, match="negative diagonal"):
            fisher.validate_symmetric_psd("A", torch.tensor(bad))
