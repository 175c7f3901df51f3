"""Per-layer Fisher statistics: the token-level estimator and its float64 accumulators.

Estimator ("K-FAC expand"). Every non-pad token position ``s`` of every sequence is one example.
For a targeted layer ``y = W x (+ b)`` with input ``x_s ∈ R^{d_in}`` at position ``s`` and
``δ_s = ∂ℓ/∂y_s ∈ R^{d_out}``, where ``ℓ = −Σ_{t ∈ loss tokens} log p(y_t | y_<t)`` is the
**summed** negative log-likelihood of the sequence's loss (response) tokens, the position's
contribution to ``∂ℓ/∂W`` is ``g_s = δ_s x_sᵀ``. (Backpropagating the sum, not a mean, gives
these exact per-position gradients with no rescaling; the sign of ``ℓ`` does not matter for
second moments. Sequences in a batch do not interact, so one backward of the batch total gives
every sequence's own ``δ_s``.) With ``N`` the number of non-pad positions collected:

    diag    = (1/N) Σ_s g_s ⊙ g_s = (1/N) Σ_s (δ_s ⊙ δ_s)(x_s ⊙ x_s)ᵀ        (d_out × d_in)
    A       = (1/N) Σ_s x_s x_sᵀ                                             (d_in × d_in)
    G       = (1/N) Σ_s δ_s δ_sᵀ                                             (d_out × d_out)
    A_r     = (1/N) Σ_s (Vᵀx_s)(Vᵀx_s)ᵀ = Vᵀ A V       A_trace = (1/N) Σ_s ‖x_s‖² = tr A
    G_r     = (1/N) Σ_s (Uᵀδ_s)(Uᵀδ_s)ᵀ = Uᵀ G U       G_trace = (1/N) Σ_s ‖δ_s‖² = tr G

All three kinds average over the same positions (every non-pad position, prompt and response
alike; positions whose output reaches no loss token have ``δ_s = 0``), so files collected on
different data (harm, benign) are on one per-token scale. Biases are not part of the Fisher.

Cost per batch of ``n`` rows: one matmul per statistic (``diag``: ``n·d_out·d_in``; ``kfac``:
``n·d_in²`` — shared by layers reading the same input, see :class:`SharedInput` — and
``n·d_out²``; ``lora``: ``n·d·r``), computed in float32 (float64 inputs stay float64) and added
into float64 buffers; the ``lora`` kind never forms a ``d × d`` matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.fisher import DiagFisher, Fisher, KFACFisher, LoRAFisher

ACCUMULATE_DTYPE = torch.float64


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the per-batch products: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class SharedInput:
    """One layer input of one batch as ``(n, d_in)`` rows (non-pad positions only).

    Layers fed the same tensor (q/k/v, gate/up) share one instance, so the products below are
    computed once per batch, not once per layer.
    """

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows.to(compute_dtype(rows.dtype))
        self._gram: Tensor | None = None
        self._squared: Tensor | None = None
        self._squared_norm: Tensor | None = None

    def gram(self) -> Tensor:
        """``Σ_s x_s x_sᵀ`` over this batch's rows."""
        if self._gram is None:
            self._gram = self.rows.T @ self.rows
        return self._gram

    def squared(self) -> Tensor:
        """``x_s ⊙ x_s`` for every row."""
        if self._squared is None:
            self._squared = self.rows.square()
        return self._squared

    def squared_norm(self) -> Tensor:
        """``Σ_s ‖x_s‖²`` over this batch's rows (0-d)."""
        if self._squared_norm is None:
            self._squared_norm = torch.linalg.vector_norm(self.rows).square()
        return self._squared_norm


class LayerStatistics(ABC):
    """Float64 accumulators of one layer; :meth:`result` divides by ``N`` (module doc).

    Per forward call :meth:`forward` receives the input rows and returns what
    :meth:`backward` needs later together with the output-gradient rows of that same call.
    """

    kind: str

    def __init__(self, name: str, d_out: int, d_in: int, device: torch.device) -> None:
        self.name = name
        self.d_out, self.d_in = d_out, d_in
        self.device = device
        self.n_forward = 0
        self.n_backward = 0

    def _zeros(self, *shape: int) -> Tensor:
        return torch.zeros(shape, dtype=ACCUMULATE_DTYPE, device=self.device)

    def forward(self, inputs: SharedInput) -> object:
        self.n_forward += 1
        return self._forward(inputs)

    def backward(self, saved: object, grads: Tensor) -> None:
        self.n_backward += 1
        self._backward(saved, grads.to(compute_dtype(grads.dtype)))

    @abstractmethod
    def _forward(self, inputs: SharedInput) -> object: ...

    @abstractmethod
    def _backward(self, saved: object, grads: Tensor) -> None: ...

    @abstractmethod
    def _fisher(self, n_tokens: int) -> Fisher: ...

    def buffers(self) -> dict[str, Tensor]:
        """The accumulators by name (for the non-finite check)."""
        return {key: value for key, value in vars(self).items() if isinstance(value, Tensor)}

    def result(self, n_tokens: int) -> Fisher:
        """The validated Fisher container (float64), averaged over ``n_tokens`` positions."""
        if self.n_forward == 0:
            raise SSTError(f"{self.name}: the layer was never called during the forward passes")
        if self.n_backward == 0:
            raise SSTError(
                f"{self.name}: no gradient reached the layer's output (it does not influence "
                "the loss tokens)"
            )
        for key, buffer in self.buffers().items():
            if not bool(torch.isfinite(buffer).all()):
                raise SSTError(
                    f"{self.name}: the accumulated statistic {key} contains NaN/Inf (overflow "
                    "or a non-finite model output); nothing was written"
                )
        try:
            return self._fisher(n_tokens)
        except SSTError as error:
            raise SSTError(f"{self.name}: {error}") from None


class DiagStatistics(LayerStatistics):
    """``diag = (1/N) Σ_s (δ_s ⊙ δ_s)(x_s ⊙ x_s)ᵀ``."""

    kind = "diag"

    def __init__(self, name: str, d_out: int, d_in: int, device: torch.device) -> None:
        super().__init__(name, d_out, d_in, device)
        self.diag = self._zeros(d_out, d_in)

    def _forward(self, inputs: SharedInput) -> Tensor:
        return inputs.squared()

    def _backward(self, saved: object, grads: Tensor) -> None:
        assert isinstance(saved, Tensor)
        self.diag.add_(grads.square().T @ saved)

    def _fisher(self, n_tokens: int) -> DiagFisher:
        return DiagFisher(self.diag / n_tokens)


class KFACStatistics(LayerStatistics):
    """``A = (1/N) Σ_s x_s x_sᵀ``, ``G = (1/N) Σ_s δ_s δ_sᵀ``."""

    kind = "kfac"

    def __init__(self, name: str, d_out: int, d_in: int, device: torch.device) -> None:
        super().__init__(name, d_out, d_in, device)
        self.A = self._zeros(d_in, d_in)
        self.G = self._zeros(d_out, d_out)

    def _forward(self, inputs: SharedInput) -> None:
        self.A.add_(inputs.gram())

    def _backward(self, saved: object, grads: Tensor) -> None:
        self.G.add_(grads.T @ grads)

    def _fisher(self, n_tokens: int) -> KFACFisher:
        return KFACFisher(self.A / n_tokens, self.G / n_tokens)


class LoRAStatistics(LayerStatistics):
    """``A_r = VᵀAV``, ``G_r = UᵀGU`` and the full traces, from ``n × r`` projections only."""

    kind = "lora"

    def __init__(
        self, name: str, d_out: int, d_in: int, device: torch.device, U: Tensor, V: Tensor
    ) -> None:
        super().__init__(name, d_out, d_in, device)
        if U.shape[0] != d_out or V.shape[0] != d_in:
            raise SSTError(
                f"{name}: adapter subspace U {tuple(U.shape)}, V {tuple(V.shape)} does not fit "
                f"the layer's weight ({d_out}, {d_in})"
            )
        self.U, self.V = U.to(device, ACCUMULATE_DTYPE), V.to(device, ACCUMULATE_DTYPE)
        self._projections: dict[torch.dtype, tuple[Tensor, Tensor]] = {}
        self.A_r = self._zeros(V.shape[1], V.shape[1])
        self.G_r = self._zeros(U.shape[1], U.shape[1])
        self.A_trace = self._zeros()
        self.G_trace = self._zeros()

    def _bases(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if dtype not in self._projections:
            self._projections[dtype] = (self.U.to(dtype), self.V.to(dtype))
        return self._projections[dtype]

    def _forward(self, inputs: SharedInput) -> None:
        projected = inputs.rows @ self._bases(inputs.rows.dtype)[1]
        self.A_r.add_(projected.T @ projected)
        self.A_trace.add_(inputs.squared_norm())

    def _backward(self, saved: object, grads: Tensor) -> None:
        projected = grads @ self._bases(grads.dtype)[0]
        self.G_r.add_(projected.T @ projected)
        self.G_trace.add_(torch.linalg.vector_norm(grads).square())

    def _fisher(self, n_tokens: int) -> LoRAFisher:
        return LoRAFisher(
            self.U,
            self.V,
            self.A_r / n_tokens,
            self.G_r / n_tokens,
            A_trace=float(self.A_trace) / n_tokens,
            G_trace=float(self.G_trace) / n_tokens,
        )


def make_statistics(
    kind: str,
    name: str,
    shape: tuple[int, int],
    device: torch.device,
    subspace: tuple[Tensor, Tensor] | None = None,
) -> LayerStatistics:
    """The accumulator of ``kind`` for a weight of ``shape = (d_out, d_in)``.

    ``subspace = (U, V)`` is required for (and only used by) ``lora``.
    """
    d_out, d_in = shape
    if kind == "diag":
        return DiagStatistics(name, d_out, d_in, device)
    if kind == "kfac":
        return KFACStatistics(name, d_out, d_in, device)
    if kind == "lora":
        if subspace is None:
            raise SSTError(f"{name}: the lora kind needs the adapter subspace (U, V)")
        return LoRAStatistics(name, d_out, d_in, device, *subspace)
    raise SSTError(f"unknown Fisher kind {kind!r}; expected diag, kfac or lora")
