"""Per-layer Fisher statistics: the token-level estimator and its float64 accumulators.

This module holds what every kind shares (the estimator, :class:`WindowedSum`,
:class:`SharedInput`, the :class:`LayerStatistics` base); each kind's accumulator lives in
its module of :mod:`sst_merge_plugin.core.kinds`.

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
``n·d_out²``, each computed on its block upper triangle only, :func:`add_gram_`, i.e. about
``(k+1)/(2k)`` of that with ``k`` blocks; ``lora``: ``n·d·r``); the ``lora`` kind never forms a
``d × d`` matrix.

Precision (:class:`WindowedSum`): products are computed in float32 (float64 inputs stay
float64) and summed in float32 over a window of at most ``WINDOW`` batches — fused into the
matmul (``addmm_``) where possible — then added into a float64 total; so float32 round-off is
that of one window, and the sum over the whole data set is float64.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.fisher import Fisher, all_finite

ACCUMULATE_DTYPE = torch.float64
#: batches summed in float32 before the sum is added into the float64 total
WINDOW = 16
#: smallest column block of the block-triangular Gram products (:func:`add_gram_`)
GRAM_BLOCK = 192


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the per-batch products: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(dim: int) -> list[tuple[int, int]]:
    """``min(8, dim // GRAM_BLOCK)`` (at least 1) near-equal column blocks of ``range(dim)``."""
    count = max(1, min(8, dim // GRAM_BLOCK))
    edges = [round(i * dim / count) for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def add_gram_(out: Tensor, rows: Tensor, beta: float) -> None:
    """``out ← beta·out + rowsᵀ rows`` on the diagonal and upper off-diagonal blocks only.

    A symmetric product needs only its block upper triangle: with ``k`` blocks this costs
    ``(k+1)/(2k)`` of the full matmul. The lower off-diagonal blocks of ``out`` are left as they
    are (:func:`mirror_upper_blocks_` restores them). ``beta = 0`` ignores ``out``'s contents.
    """
    blocks = _blocks(rows.shape[1])
    for index, (row_start, row_end) in enumerate(blocks):
        for col_start, col_end in blocks[index:]:
            out[row_start:row_end, col_start:col_end].addmm_(
                rows[:, row_start:row_end].T, rows[:, col_start:col_end], beta=beta
            )


def mirror_upper_blocks_(matrix: Tensor) -> None:
    """Copy the upper off-diagonal blocks (of :func:`_blocks`) onto the lower ones, transposed."""
    blocks = _blocks(matrix.shape[0])
    for index, (row_start, row_end) in enumerate(blocks):
        for col_start, col_end in blocks[index + 1 :]:
            matrix[col_start:col_end, row_start:row_end] = matrix[
                row_start:row_end, col_start:col_end
            ].T


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
        """``Σ_s x_s x_sᵀ`` over this batch's rows (block-triangular matmul, then mirrored)."""
        if self._gram is None:
            dim = self.rows.shape[1]
            self._gram = self.rows.new_empty((dim, dim))
            add_gram_(self._gram, self.rows, beta=0)
            mirror_upper_blocks_(self._gram)
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


class WindowedSum:
    """A sum of per-batch terms: float32 within windows of ``WINDOW`` terms, float64 across.

    The window buffer is created by the first term and reused afterwards (``beta=0`` starts a
    new window), so a term costs one fused ``addmm_`` (a Gram term: its block upper triangle,
    see :func:`add_gram_`, mirrored once per window) or one ``add_``.
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self._window: Tensor | None = None
        self._terms = 0
        self._mirror = False

    def _beta(self) -> float:
        return 1.0 if self._terms else 0.0

    def add_product(self, left: Tensor, right: Tensor) -> None:
        """Add ``leftᵀ @ right``."""
        if self._window is None:
            self._window = left.new_empty((left.shape[1], right.shape[1]))
        self._window.addmm_(left.T, right, beta=self._beta())
        self._count()

    def add_gram(self, rows: Tensor) -> None:
        """Add the symmetric ``rowsᵀ @ rows`` (block upper triangle only, see :func:`add_gram_`)."""
        if self._window is None:
            self._window = rows.new_empty((rows.shape[1], rows.shape[1]))
        add_gram_(self._window, rows, beta=self._beta())
        self._mirror = True
        self._count()

    def add(self, term: Tensor) -> None:
        """Add ``term`` (e.g. a shared product or a 0-d sum)."""
        if self._window is None:
            self._window = term.clone()
        elif self._terms:
            self._window.add_(term)
        else:
            self._window.copy_(term)
        self._count()

    def _count(self) -> None:
        self._terms += 1
        if self._terms == WINDOW:
            self.flush()

    def flush(self) -> None:
        """Add the window into the float64 total and start a new window."""
        if not self._terms:
            return
        assert self._window is not None
        if self._mirror:
            mirror_upper_blocks_(self._window)
            self._mirror = False
        if self.total is None:
            self.total = self._window.to(ACCUMULATE_DTYPE, copy=True)
        else:
            self.total.add_(self._window)
        self._terms = 0

    def value(self) -> Tensor:
        """The float64 sum of every term so far (flushes and releases the window buffer)."""
        self.flush()
        self._window = None
        if self.total is None:
            raise SSTError("no statistics were accumulated")
        return self.total


class LayerStatistics(ABC):
    """The :class:`WindowedSum` s of one layer; :meth:`result` divides by ``N`` (module doc).

    Per forward call :meth:`forward` receives the input rows and returns what
    :meth:`backward` needs later together with the output-gradient rows of that same call.
    """

    kind: str
    #: names of the sums, in the order of the container's fields
    sum_names: tuple[str, ...]

    def __init__(self, name: str, d_out: int, d_in: int) -> None:
        self.name = name
        self.d_out, self.d_in = d_out, d_in
        self.sums = {key: WindowedSum() for key in self.sum_names}
        self.n_forward = 0
        self.n_backward = 0

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
    def _fisher(self, averages: dict[str, Tensor]) -> Fisher: ...

    def result(self, n_tokens: int) -> Fisher:
        """The validated Fisher container (float64), averaged over ``n_tokens`` positions."""
        if self.n_forward == 0:
            raise SSTError(f"{self.name}: the layer was never called during the forward passes")
        if self.n_backward == 0:
            raise SSTError(
                f"{self.name}: no gradient reached the layer's output (it does not influence "
                "the loss tokens)"
            )
        averages = {}
        for key, windowed in self.sums.items():
            total = windowed.value()
            if not all_finite(total):
                raise SSTError(
                    f"{self.name}: the accumulated statistic {key} contains NaN/Inf (overflow "
                    "or a non-finite model output); nothing was written"
                )
            averages[key] = total / n_tokens
        try:
            return self._fisher(averages)
        except SSTError as error:
            raise SSTError(f"{self.name}: {error}") from None
