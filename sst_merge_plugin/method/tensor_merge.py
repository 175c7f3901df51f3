"""Host-neutral per-tensor merge of the four SST methods (mergekit and FusionBench share it).

:func:`merge_tensor` takes plain tensors and validated settings (:mod:`.settings`) and returns
the merged tensor; the mergekit ``GroupMergeMethod`` and the FusionBench algorithm are thin
adapters over it, so both hosts produce bit-identical weights from the same inputs (DARE draws
from torch's global RNG: same seed and same tensor order give the same masks). The utility
combiners are mergekit's own kernels (mergekit is a library dependency of the method layer,
whichever host runs it).

Per weight ``W`` (name ``name``) with base ``W0``, safety input ``s`` and utility inputs ``u``:

* **utility merge** ``W_U`` — mergekit's own built-in method ``utility_merge`` (its registered
  ``GeneralizedTaskArithmeticMerge``: task vectors ``W_u − W0``, ``mergekit.sparsify``
  magnitude/random sparsification with each input's ``density``, TIES sign consensus,
  ``weight``) run on ``W0`` and the utility inputs only, with that method's defaults for its
  other parameters (ties: ``normalize: true``; dare: ``rescale: true``; ``lambda: 1``). It runs
  in the tensors' dtype, exactly as the built-in does, so it equals the built-in bit for bit.
* ``sst_merge`` — ``W = W_U + s·w_s·P(ΔW_s)``, ``ΔW_s = W_s − W0`` (float64), ``P`` =
  :func:`~sst_merge_plugin.core.project_patch` with the ``harm_fisher``/``benign_fisher``
  factors of ``name`` (read lazily, moved to the tensor's device; one shared ``GEVPCache``).
* ``sst_single_fisher`` — the same with :func:`~sst_merge_plugin.core.project_single_fisher`.
* ``sst_safe_lora`` — on the merged utility delta ``U = W_U − W0`` and the alignment matrix
  ``ΔW_s``: ``gate: project`` → Safe LoRA (:func:`~sst_merge_plugin.core.safe_lora_project`):
  ``W = W0 + s·w_s·ΔW_s + U'`` with ``U' = C U`` where ``cos(U, C U) < threshold``, else
  ``U`` — the aligned model ``W0 + ΔW_s`` plus the projected fine-tuning deltas, as in the
  paper (there the aligned checkpoint already contains ``ΔW_s``); ``gate: merge`` → SafeMERGE
  (:func:`~sst_merge_plugin.core.cosine_gated_merge`, ``U → U + s·w_s·ΔW_s`` where gated).
  With one utility input this is exactly the published per-layer rule; with several, the gate
  acts on their merge. Non-2-D tensors keep ``W_U``.
* ``sst_fisher_merge`` — ``W = W0 + Σ_i w_i F_i Δ_i / Σ_i w_i F_i`` with each input's diagonal
  Fisher (:func:`~sst_merge_plugin.core.fisher_weighted_average`, ``floor``, ``normalise``).
  Non-2-D tensors (no diagonal Fisher entries): the ``w``-weighted average of the deltas.

Special cases (the methods with a safety input):

* a zero safety delta (``W_s == W0`` exactly, e.g. a module the safety LoRA does not touch)
  returns ``W_U`` unchanged — no Fisher is needed;
* non-2-D tensors (norms, biases): ``W_U + s·w_s·ΔW_s`` (the raw safety delta; these have no
  Linear-layer Fisher);
* a 2-D tensor without Fisher entries: ``missing_fisher: error`` raises (naming the tensor and
  the file), ``keep`` adds the unprojected ``s·w_s·ΔW_s``, ``drop`` adds nothing;
* a restricted (lora-kind) projection that would drop more of ``ΔW_s`` (or, projecting the
  utility side, of a ``ΔW_i``) than rounding explains
  (:func:`~sst_merge_plugin.method.checks.subspace_problem`) raises: the Fishers belong to
  another adapter than that input's weights.

The correction is computed in float64 and added to ``W_U`` in float64; the result has the dtype
of ``base``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

import torch
from mergekit.merge_methods import PerInputValues, TensorEntry, TensorGroup
from mergekit.merge_methods import get as get_merge_method
from torch import Tensor

from sst_merge_plugin.core import (
    GEVPCache,
    cosine_gated_merge,
    fisher_weighted_average,
    project_patch,
    project_single_fisher,
    safe_lora_project,
)
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.fisher.file import FisherFile, FisherFileError
from sst_merge_plugin.method.checks import SUBSPACE_HINT, subspace_problem
from sst_merge_plugin.method.fisher_sources import FisherSources
from sst_merge_plugin.method.settings import (
    Gate,
    InputSettings,
    Method,
    MissingFisher,
    SharedSettings,
    safety_input,
)


class MergedTensor(NamedTuple):
    """The merged tensor and what happened to it.

    ``diagnostics`` — ``None`` when the tensor is the plain utility merge (zero safety delta,
    or ``sst_fisher_merge`` with all-zero deltas); otherwise a JSON-serialisable dict with
    ``action`` (``projected``, ``raw_delta_not_2d``, ``missing_fisher_keep``,
    ``missing_fisher_drop``, ``gated``, ``not_gated``, ``fisher_weighted``,
    ``weighted_average``) and, for ``projected``, the
    :class:`~sst_merge_plugin.core.ProjectionDiagnostics` fields (kept gain/cost fractions, λ
    summary, kept count). ``safety_factors`` — ``(left, right)`` float64 with
    ``left @ right = s·w_s·P(ΔW_s)`` for lora-kind projections (rank ≤ r), else ``None``.
    """

    tensor: Tensor
    diagnostics: dict[str, Any] | None
    safety_factors: tuple[Tensor, Tensor] | None = None


class _BaseInput:
    """Id of the base entry in the utility sub-group (never equal to an input id)."""

    def __repr__(self) -> str:
        return "<base>"


_BASE = _BaseInput()


def utility_merge(
    base: Tensor,
    tensors: Mapping[Hashable, Tensor],
    inputs: Mapping[Hashable, InputSettings],
    method: str,
) -> Tensor:
    """Run mergekit's registered built-in ``method`` on ``base`` and ``tensors`` (in order).

    Per-input ``weight`` and ``density`` come from ``inputs``; every other parameter of the
    built-in takes its default. Returns ``base`` itself when ``tensors`` is empty.
    """
    merge = get_merge_method(method)
    ids = list(tensors)
    group = TensorGroup(
        entries=(
            TensorEntry(id=_BASE, tensor=base, is_base=True),
            *(TensorEntry(id=key, tensor=tensors[key]) for key in ids),
        )
    )
    parameters: dict[str, Any] = {
        spec.name: spec.validate(spec.default) for spec in merge.spec.shared_parameters
    }
    parameters["weight"] = PerInputValues([(key, inputs[key].weight) for key in ids])
    parameters["density"] = PerInputValues([(key, inputs[key].density) for key in ids])
    return merge.merge_group(group, **parameters)


def merge_tensor(
    name: str,
    base: Tensor,
    tensors: Mapping[Hashable, Tensor],
    inputs: Mapping[Hashable, InputSettings],
    settings: SharedSettings,
    fishers: FisherSources,
    cache: GEVPCache,
) -> MergedTensor:
    """Merge one weight with an SST method (see the module doc for every rule).

    ``name`` — the weight's name, used to look up Fisher entries (e.g.
    ``model.layers.0.self_attn.q_proj.weight``); ``base`` — ``W0``; ``tensors`` — the full
    weights of the non-base inputs (not deltas), keyed by input id, in the host's input order
    (the order DARE draws its masks in); ``inputs`` — their settings from
    :func:`~sst_merge_plugin.method.settings.parse_inputs` (same keys); ``settings`` — from
    :func:`~sst_merge_plugin.method.settings.parse_shared`; ``fishers`` — from
    :meth:`FisherSources.open(settings, inputs) <FisherSources.open>`; ``cache`` — one
    :class:`~sst_merge_plugin.core.GEVPCache` shared by all tensors of the merge.

    Raises :class:`~sst_merge_plugin.core.SSTError` for mismatched inputs, a missing Fisher
    entry under ``missing_fisher: error``, or Fisher factors that do not fit the tensor.
    """
    if set(tensors) != set(inputs):
        raise SSTError(
            f"{name}: tensors for {sorted(map(str, tensors))} but settings for "
            f"{sorted(map(str, inputs))}"
        )
    for key, tensor in tensors.items():
        if tensor.shape != base.shape:
            raise SSTError(
                f"{name}: input {key} has shape {tuple(tensor.shape)}, base {tuple(base.shape)}"
            )
    if settings.method == Method.SST_FISHER_MERGE:
        return _fisher_merge(name, base, tensors, inputs, settings, fishers)
    safety = safety_input(inputs)
    utility_ids = [key for key in tensors if key != safety]
    common = {"damping": settings.damping, "solver": settings.solver, "cache": cache, "name": name}
    utility_records: dict[str, Any] = {}
    if settings.project is not None and settings.project.utility and base.ndim == 2:
        tensors, utility_records = _project_utilities(
            name, base, tensors, utility_ids, settings, fishers, common
        )
    merged = utility_merge(
        base,
        {key: tensors[key] for key in utility_ids},
        {key: inputs[key] for key in utility_ids},
        settings.utility_merge,
    )
    extra = {"utility": utility_records} if utility_records else {}
    if torch.equal(tensors[safety], base):
        return MergedTensor(merged, {"action": "utility_only", **extra} if extra else None)
    safety_delta = tensors[safety].double() - base.double()
    factor = settings.scale * inputs[safety].weight
    if settings.method == Method.SST_SAFE_LORA:
        return _safe_lora(base, merged, safety_delta, factor, settings)
    if base.ndim != 2:
        return _add(merged, factor * safety_delta, {"action": "raw_delta_not_2d"})
    if not settings.project.safety:
        return _add(merged, factor * safety_delta, {"action": "safety_unprojected", **extra})
    missing = [
        (label, opened)
        for label, opened in (("harm_fisher", fishers.harm), ("benign_fisher", fishers.benign))
        if opened is not None and name not in opened
    ]
    if missing:
        return _missing_fisher(name, merged, factor * safety_delta, settings, missing)
    harm = fishers.harm.get(name, device=base.device)
    if settings.method == Method.SST_MERGE:
        benign = fishers.benign.get(name, device=base.device)
        result = project_patch(safety_delta, harm, benign, settings.selection, **common)
    elif settings.method == Method.SST_SINGLE_FISHER:
        result = project_single_fisher(safety_delta, harm, settings.selection, **common)
    else:  # pragma: no cover - parse_shared admits no other method
        raise SSTError(f"unknown SST method {settings.method!r}")
    problem = subspace_problem(
        name,
        result.diagnostics.subspace_residual,
        base,
        tensors[safety],
        "harm_fisher",
        fishers.harm,
    )
    if problem is not None:
        raise SSTError(f"{problem}: {SUBSPACE_HINT}")
    factors = None
    if result.factors is not None:
        factors = (factor * result.factors[0], result.factors[1])
    record = {"action": "projected", **result.diagnostics.as_dict(), **extra}
    return _add(merged, factor * result.patch, record, factors)


def _project_utilities(
    name: str,
    base: Tensor,
    tensors: Mapping[Hashable, Tensor],
    utility_ids: list[Hashable],
    settings: SharedSettings,
    fishers: FisherSources,
    common: Mapping[str, Any],
) -> tuple[dict[Hashable, Tensor], dict[str, Any]]:
    """The dual projection (``docs/design.md`` §1.6): each utility input's delta
    ``ΔW_i = W_i − W0`` replaced by ``P_i(ΔW_i)``, projected with its gain Fisher ``G_i`` (for
    ``sst_single_fisher`` the identity: keep the directions ``C`` penalises least) and the cost
    Fisher ``C``. Returns the inputs' new full weights and one record per projected input."""
    projected = dict(tensors)
    records: dict[str, Any] = {}
    cost_file = fishers.cost
    for key in utility_ids:
        if torch.equal(tensors[key], base):
            continue
        delta = tensors[key].double() - base.double()
        gain_file = fishers.gain.get(key)
        lacking = [
            (label, opened)
            for label, opened in (("cost_fisher", cost_file), (f"{key}: gain_fisher", gain_file))
            if opened is not None and name not in opened
        ]
        if lacking:
            outcome = _missing_fisher(name, base, delta, settings, lacking, f"{key}'s delta")
            projected[key] = outcome.tensor
            records[str(key)] = outcome.diagnostics
            continue
        cost = cost_file.get(name, device=base.device)
        gain = (
            cost.identity_like() if gain_file is None else gain_file.get(name, device=base.device)
        )
        result = project_patch(delta, gain, cost, settings.selection, **common)
        residual = result.diagnostics.subspace_residual
        problem = subspace_problem(
            name, residual, base, tensors[key], "cost_fisher", cost_file, f"{key}'s delta"
        )
        if problem is not None:
            raise SSTError(f"{problem}: {SUBSPACE_HINT}")
        projected[key] = (base.double() + result.patch).to(base.dtype)
        records[str(key)] = {"action": "projected", **result.diagnostics.as_dict()}
    return projected, records


def _add(
    merged: Tensor,
    correction: Tensor,
    record: dict[str, Any],
    factors: tuple[Tensor, Tensor] | None = None,
) -> MergedTensor:
    """``merged + correction`` in float64, returned in ``merged``'s dtype."""
    out = (merged.double() + correction).to(merged.dtype)
    return MergedTensor(out, record, factors)


def _missing_fisher(
    name: str,
    merged: Tensor,
    correction: Tensor,
    settings: SharedSettings,
    missing: list[tuple[str, FisherFile]],
    what: str = "the safety delta",
) -> MergedTensor:
    """``missing_fisher`` for ``what`` (a non-zero delta whose ``missing`` files lack ``name``):
    an error, ``merged + correction`` (``keep``) or ``merged`` (``drop``)."""
    files = ", ".join(f"{label} {str(opened.path)!r}" for label, opened in missing)
    if settings.missing_fisher == MissingFisher.ERROR:
        raise FisherFileError(
            f"{name}: {what} is non-zero but {files} has no Fisher entries for this tensor "
            f"(missing_fisher: error; use 'keep' to add the unprojected delta or 'drop' to "
            "leave it out)"
        )
    if settings.missing_fisher == MissingFisher.KEEP:
        return _add(merged, correction, {"action": "missing_fisher_keep"})
    return MergedTensor(merged, {"action": "missing_fisher_drop"})


def _safe_lora(
    base: Tensor, merged: Tensor, safety_delta: Tensor, factor: float, settings: SharedSettings
) -> MergedTensor:
    if base.ndim != 2:
        return _add(merged, factor * safety_delta, {"action": "not_gated", "reason": "not 2-D"})
    utility_delta = merged.double() - base.double()
    if settings.gate == Gate.PROJECT:
        decision = safe_lora_project(utility_delta, safety_delta, settings.threshold)
        delta = factor * safety_delta + decision.delta
    else:
        decision = cosine_gated_merge(
            utility_delta, safety_delta, settings.threshold, safety_weight=factor
        )
        delta = decision.delta
    record = {
        "action": "gated" if decision.gated else "not_gated",
        "similarity": decision.similarity,
    }
    if not decision.gated and settings.gate == Gate.MERGE:
        return MergedTensor(merged, record)
    return MergedTensor((base.double() + delta).to(base.dtype), record)


def _fisher_merge(
    name: str,
    base: Tensor,
    tensors: Mapping[Hashable, Tensor],
    inputs: Mapping[Hashable, InputSettings],
    settings: SharedSettings,
    fishers: FisherSources,
) -> MergedTensor:
    ids = list(tensors)
    if all(torch.equal(tensors[key], base) for key in ids):
        return MergedTensor(base, None)
    deltas = [tensors[key].double() - base.double() for key in ids]
    weights = [inputs[key].weight for key in ids]
    missing = [key for key in ids if name not in fishers.per_input[key]]
    if base.ndim == 2 and missing:
        if settings.missing_fisher == MissingFisher.ERROR:
            files = ", ".join(f"{key}: {str(fishers.per_input[key].path)!r}" for key in missing)
            raise FisherFileError(
                f"{name}: no Fisher entries in {files} (missing_fisher: error; use 'keep' for "
                "the plain weighted average of the deltas or 'drop' to keep the base weights)"
            )
        if settings.missing_fisher == MissingFisher.DROP:
            return MergedTensor(base, {"action": "missing_fisher_drop"})
    if base.ndim != 2 or missing:
        uniform = [torch.ones_like(deltas[0])] * len(deltas)
        average = fisher_weighted_average(deltas, uniform, weights, floor=0.0)
        action = "weighted_average" if base.ndim != 2 else "missing_fisher_keep"
        return _add(base, average, {"action": action})
    diagonals = [fishers.per_input[key].get(name, device=base.device).diag for key in ids]
    for key, diagonal in zip(ids, diagonals, strict=True):
        if tuple(diagonal.shape) != tuple(base.shape):
            raise FisherFileError(
                f"{name}: the Fisher of {key} has shape {tuple(diagonal.shape)}, the tensor "
                f"{tuple(base.shape)}"
            )
    average = fisher_weighted_average(
        deltas, diagonals, weights, floor=settings.floor, normalise=settings.normalise
    )
    return _add(base, average, {"action": "fisher_weighted"})
