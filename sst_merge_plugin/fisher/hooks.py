"""Forward hooks on layer inputs and tensor hooks on layer-output gradients, with a padding mask.

:class:`FisherHooks` is a context manager over a model's targeted layers. For each forward call
of a layer the forward hook takes the layer input ``x`` (shape ``(batch, seq, d_in)``), keeps the
rows of the non-pad positions of the current batch (:meth:`FisherHooks.begin_batch`), hands
them to the layer's :class:`~sst_merge_plugin.core.statistics.LayerStatistics`, and registers a hook on the output
tensor; during backward that hook receives ``∂ℓ/∂y`` for the same call, keeps the same rows and
completes the statistic. Pad positions therefore contribute nothing, whatever the padding side.

Layers fed the very same input tensor share one :class:`~sst_merge_plugin.core.statistics.SharedInput` per batch
(keyed by the tensor's identity; the references are dropped in :meth:`FisherHooks.end_forward`).
The hooks are removed on exit, also on errors and Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.statistics import LayerStatistics, SharedInput


class FisherHooks:
    """Hooks feeding ``statistics[name]`` from ``layers[name]`` (see module doc)."""

    def __init__(
        self, layers: Mapping[str, nn.Module], statistics: Mapping[str, LayerStatistics]
    ) -> None:
        self.layers = dict(layers)
        self.statistics = dict(statistics)
        self._handles: list[RemovableHandle] = []
        self._batch_shape: tuple[int, int] | None = None
        self._keep: Tensor | None = None
        self._shared: dict[int, tuple[Tensor, SharedInput]] = {}

    def __enter__(self) -> FisherHooks:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._shared.clear()
        self._keep = None

    def begin_batch(self, attention_mask: Tensor) -> None:
        """Set the positions the next forward/backward collects: ``attention_mask != 0``."""
        self._shared.clear()
        self._batch_shape = (int(attention_mask.shape[0]), int(attention_mask.shape[1]))
        flat = attention_mask.reshape(-1) != 0
        self._keep = None if bool(flat.all()) else flat.nonzero().squeeze(1)

    def end_forward(self) -> None:
        """Drop the per-batch shared inputs (call between forward and backward)."""
        self._shared.clear()

    def _rows(self, name: str, tensor: Tensor, what: str) -> Tensor:
        if self._batch_shape is None:
            raise SSTError("FisherHooks.begin_batch was not called before the forward pass")
        if tuple(tensor.shape[:-1]) != self._batch_shape:
            raise SSTError(
                f"{name}: layer {what} has shape {tuple(tensor.shape)}, not (batch, seq, d) = "
                f"{(*self._batch_shape, tensor.shape[-1])}; layers that see a re-arranged "
                "subset of tokens (e.g. MoE experts) are not supported"
            )
        flat = tensor.reshape(-1, tensor.shape[-1])
        return flat if self._keep is None else flat.index_select(0, self._keep)

    def _shared_input(self, name: str, inputs: Tensor) -> SharedInput:
        cached = self._shared.get(id(inputs))
        if cached is None or cached[0] is not inputs:
            cached = (inputs, SharedInput(self._rows(name, inputs.detach(), "input")))
            self._shared[id(inputs)] = cached
        return cached[1]

    def _forward_hook(self, name: str):
        statistics = self.statistics[name]

        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if not args or not isinstance(args[0], Tensor):
                raise SSTError(f"{name}: the layer was called without a tensor input")
            if not torch.is_grad_enabled() or not output.requires_grad:
                return  # no backward will follow (e.g. a no_grad call); nothing to pair
            saved = statistics.forward(self._shared_input(name, args[0]))

            def grad_hook(grad: Tensor) -> None:
                statistics.backward(saved, self._rows(name, grad, "output gradient"))

            output.register_hook(grad_hook)

        return hook
