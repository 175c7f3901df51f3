"""Parameters of the four SST merge methods: one table, one parser, one key checker.

Every parameter is declared once in :data:`PARAMETERS` with the methods that take it; the
mergekit ``MergeMethodSpec`` of each method is derived from that table
(:func:`parameter_specs`). Values arrive already resolved by mergekit (per tensor, filters and
gradients applied) and are turned into validated, immutable settings by :func:`parse_shared`
and :func:`parse_inputs` — the same code at planning time (up-front validation), inside the
per-tensor merge, and in the FusionBench adapter. :func:`check_config_keys` inspects the raw
``MergeConfiguration`` for misspelled or misplaced keys, which mergekit itself silently ignores.

Methods: ``sst_merge`` (SST projection with two Fishers), ``sst_single_fisher`` (projection with
``F_harm`` alone, the AlignGuard-LoRA/SafeAnchor ablation), ``sst_safe_lora`` (Safe LoRA /
SafeMERGE cosine gate), ``sst_fisher_merge`` (diagonal-Fisher-weighted task vectors).

Shared parameters (top-level ``parameters:``), methods that take them, default:

* ``harm_fisher`` — sst_merge, sst_single_fisher: path of the ``F_harm`` file (required).
* ``benign_fisher`` — sst_merge: path of the ``F_benign`` file (required).
* ``select`` — sst_merge, sst_single_fisher: ``top_k|energy|ratio|soft|all`` (``energy``),
  with its own parameter ``k`` (required with top_k), ``energy`` (0.9), ``ratio`` (1.0) or
  ``rho`` (1.0); setting another mode's parameter is an error.
* ``damping`` (1e-2), ``solver`` (``auto|dense|krylov``) — sst_merge, sst_single_fisher.
* ``write_adapter`` — sst_merge, sst_single_fisher: ``none|safety|merged`` (``none``), also
  write a PEFT LoRA adapter of the projected safety patch or of the whole merged delta
  (lora-kind Fishers only; see :mod:`.adapter`).
* ``scale`` — sst_merge, sst_single_fisher, sst_safe_lora: ``s`` in ``W0 + U + s·P(ΔW_s)``
  (1.0).
* ``utility_merge`` — same three: ``task_arithmetic|ties|dare_ties|dare_linear``
  (``task_arithmetic``), run by mergekit's own built-in method of that name.
* ``missing_fisher`` — sst_merge, sst_single_fisher, sst_fisher_merge: ``error|keep|drop``
  (``error``), what to do with a tensor that needs a Fisher but has no entry.
* ``check_fingerprint`` — same three: ``true|false`` (``true``), refuse Fisher files whose
  recorded ``model_fingerprint`` is not the base model's (or, for ``sst_fisher_merge``, that
  input's); ``false`` for files collected on purpose at another checkpoint of the same
  architecture, e.g. the utility merge ``W0 + U`` (shapes are still checked).
* ``threshold`` — sst_safe_lora: the cosine gate τ (required).
* ``gate`` — sst_safe_lora: ``project`` (Safe LoRA: add ``s·ΔW_s`` and replace the utility
  delta ``U`` by ``C U`` where gated) or ``merge`` (SafeMERGE: add ``s·ΔW_s`` where gated) (``project``).
* ``floor`` (1e-6), ``normalise`` (false) — sst_fisher_merge (see
  :func:`~sst_merge_plugin.core.fisher_weighted_average`).

Per-model parameters (under each model's ``parameters:``; a top-level value is the default):

* ``weight`` (all; 1.0) — utility inputs: their weight in the utility merge (as in mergekit's
  task arithmetic / TIES / DARE); the safety input: a factor on its patch, like ``scale``;
  ``sst_fisher_merge``: ``w_i`` of the Fisher-weighted average.
* ``density`` (all but sst_fisher_merge; 1.0) — utility inputs' density for TIES/DARE
  sparsification (mergekit's own ``density``); ignored for the safety input.
* ``role`` (all but sst_fisher_merge; ``utility``) — ``safety`` for exactly one input.
* ``fisher`` (sst_fisher_merge; required) — path of that input's diagonal Fisher file.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mergekit.merge_methods.base import ParameterScope, ParameterSpec

from sst_merge_plugin.core import DEFAULT_DAMPING, Selection, SSTError
from sst_merge_plugin.core.gevp import SOLVERS
from sst_merge_plugin.core.selection import SELECT_MODES

SST_MERGE = "sst_merge"
SST_SINGLE_FISHER = "sst_single_fisher"
SST_SAFE_LORA = "sst_safe_lora"
SST_FISHER_MERGE = "sst_fisher_merge"
METHOD_NAMES = (SST_MERGE, SST_SINGLE_FISHER, SST_SAFE_LORA, SST_FISHER_MERGE)

#: methods that project the safety patch with Fishers
PROJECTING = frozenset({SST_MERGE, SST_SINGLE_FISHER})
#: methods with one ``role: safety`` input and utility inputs
WITH_ROLES = frozenset({SST_MERGE, SST_SINGLE_FISHER, SST_SAFE_LORA})

ROLES = ("safety", "utility")
UTILITY_MERGES = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
MISSING_POLICIES = ("error", "keep", "drop")
ADAPTER_MODES = ("none", "safety", "merged")
GATES = ("project", "merge")
#: the value a selection parameter takes when its mode is chosen and it is not given
SELECTION_DEFAULTS: dict[str, tuple[str, float | None]] = {
    "top_k": ("k", None),
    "energy": ("energy", 0.9),
    "ratio": ("ratio", 1.0),
    "soft": ("rho", 1.0),
    "all": ("", None),
}

_SHARED = ParameterScope.SHARED
_PER_MODEL = ParameterScope.NON_BASE


@dataclass(frozen=True)
class _Param:
    spec: ParameterSpec
    methods: frozenset[str]


def _p(name: str, value_type: Any, scope: ParameterScope, methods: Iterable[str], **kw) -> _Param:
    return _Param(ParameterSpec(name, value_type, scope, **kw), frozenset(methods))


#: every parameter of every method, declared once (see the module docstring for meanings)
PARAMETERS: tuple[_Param, ...] = (
    _p("harm_fisher", str, _SHARED, PROJECTING),
    _p("benign_fisher", str, _SHARED, {SST_MERGE}),
    _p("select", str, _SHARED, PROJECTING, default="energy"),
    _p("k", int | None, _SHARED, PROJECTING, default=None),
    _p("energy", float | None, _SHARED, PROJECTING, default=None),
    _p("ratio", float | None, _SHARED, PROJECTING, default=None),
    _p("rho", float | None, _SHARED, PROJECTING, default=None),
    _p("damping", float, _SHARED, PROJECTING, default=DEFAULT_DAMPING),
    _p("solver", str, _SHARED, PROJECTING, default="auto"),
    _p("write_adapter", str, _SHARED, PROJECTING, default="none"),
    _p("scale", float, _SHARED, WITH_ROLES, default=1.0),
    _p("utility_merge", str, _SHARED, WITH_ROLES, default="task_arithmetic"),
    _p("missing_fisher", str, _SHARED, PROJECTING | {SST_FISHER_MERGE}, default="error"),
    _p("check_fingerprint", bool, _SHARED, PROJECTING | {SST_FISHER_MERGE}, default=True),
    _p("threshold", float, _SHARED, {SST_SAFE_LORA}),
    _p("gate", str, _SHARED, {SST_SAFE_LORA}, default="project"),
    _p("floor", float, _SHARED, {SST_FISHER_MERGE}, default=1e-6),
    _p("normalise", bool, _SHARED, {SST_FISHER_MERGE}, default=False),
    _p("weight", float, _PER_MODEL, METHOD_NAMES, default=1.0),
    _p("density", float, _PER_MODEL, WITH_ROLES, default=1.0),
    _p("role", str, _PER_MODEL, WITH_ROLES, default="utility"),
    _p("fisher", str, _PER_MODEL, {SST_FISHER_MERGE}),
)


def parameter_specs(method: str) -> tuple[ParameterSpec, ...]:
    """The mergekit ``ParameterSpec``s of ``method``, in table order."""
    if method not in METHOD_NAMES:
        raise SSTError(f"unknown SST merge method {method!r}; expected one of {METHOD_NAMES}")
    return tuple(p.spec for p in PARAMETERS if method in p.methods)


@dataclass(frozen=True)
class SharedSettings:
    """Validated shared parameters of one method (fields a method does not take are ``None``)."""

    method: str
    harm_fisher: str | None = None
    benign_fisher: str | None = None
    selection: Selection | None = None
    damping: float | None = None
    solver: str | None = None
    write_adapter: str | None = None
    scale: float | None = None
    utility_merge: str | None = None
    missing_fisher: str | None = None
    check_fingerprint: bool | None = None
    threshold: float | None = None
    gate: str | None = None
    floor: float | None = None
    normalise: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for the report (``None`` fields left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "selection"}
        if self.selection is not None:
            out["selection"] = {k: v for k, v in asdict(self.selection).items() if v is not None}
        return out


@dataclass(frozen=True)
class InputSettings:
    """Validated per-model parameters of one (non-base) input."""

    weight: float = 1.0
    density: float = 1.0
    role: str = "utility"
    fisher: str | None = None


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        raise SSTError(
            f"{name}: unknown value {value!r}; expected one of {', '.join(allowed)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return value


def _finite(name: str, value: float, minimum: float | None = None) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise SSTError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise SSTError(f"{name} must be >= {minimum}, got {value}")
    return value


#: the fingerprint-check outcome reported for every Fisher file under ``check_fingerprint: false``
FINGERPRINT_NOT_CHECKED = "not checked (check_fingerprint: false)"


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SSTError(f"{name} must be true or false, got {value!r}")
    return value


def _selection(values: Mapping[str, Any]) -> Selection:
    mode = _choice("select", values.get("select", "energy"), SELECT_MODES)
    given = {key: values.get(key) for key in ("k", "energy", "ratio", "rho")}
    own, default = SELECTION_DEFAULTS[mode]
    if own and given[own] is None:
        given[own] = default
    try:
        return Selection.create(mode, **given)
    except SSTError as error:
        raise SSTError(f"select: {error}") from None


def parse_shared(method: str, values: Mapping[str, Any]) -> SharedSettings:
    """Validate the resolved shared parameters of ``method`` (raises :class:`SSTError`).

    ``values`` maps parameter names to values; parameters left out take their defaults, and a
    required one that is missing is an error.
    """
    resolved: dict[str, Any] = {}
    for spec in parameter_specs(method):
        if spec.scope != ParameterScope.SHARED:
            continue
        if values.get(spec.name) is not None:
            resolved[spec.name] = values[spec.name]
        elif spec.required:
            raise SSTError(f"{method} needs the parameter '{spec.name}'")
        else:
            resolved[spec.name] = spec.default
    fields: dict[str, Any] = {"method": method}
    if method in PROJECTING:
        fields["harm_fisher"] = str(resolved["harm_fisher"])
        if method == SST_MERGE:
            fields["benign_fisher"] = str(resolved["benign_fisher"])
        fields["selection"] = _selection(resolved)
        fields["damping"] = _finite("damping", resolved["damping"], 0.0)
        fields["solver"] = _choice("solver", resolved["solver"], SOLVERS)
        fields["write_adapter"] = _choice("write_adapter", resolved["write_adapter"], ADAPTER_MODES)
    if method in WITH_ROLES:
        fields["scale"] = _finite("scale", resolved["scale"])
        fields["utility_merge"] = _choice(
            "utility_merge", resolved["utility_merge"], UTILITY_MERGES
        )
    if method in PROJECTING or method == SST_FISHER_MERGE:
        fields["missing_fisher"] = _choice(
            "missing_fisher", resolved["missing_fisher"], MISSING_POLICIES
        )
        fields["check_fingerprint"] = _flag("check_fingerprint", resolved["check_fingerprint"])
    if method == SST_SAFE_LORA:
        fields["threshold"] = _finite("threshold", resolved["threshold"])
        fields["gate"] = _choice("gate", resolved["gate"], GATES)
    if method == SST_FISHER_MERGE:
        fields["floor"] = _finite("floor", resolved["floor"], 0.0)
        fields["normalise"] = bool(resolved["normalise"])
    return SharedSettings(**fields)


def parse_inputs(
    method: str, values: Mapping[Hashable, Mapping[str, Any]]
) -> dict[Hashable, InputSettings]:
    """Validate the resolved per-model parameters of the non-base inputs, keyed like ``values``.

    Methods with roles need exactly one ``role: safety`` input; ``sst_fisher_merge`` needs a
    ``fisher`` path for every input.
    """
    inputs: dict[Hashable, InputSettings] = {}
    for model, params in values.items():
        fields: dict[str, Any] = {"weight": _finite(f"{model}: weight", params.get("weight", 1.0))}
        if method in WITH_ROLES:
            fields["density"] = _finite(f"{model}: density", params.get("density", 1.0), 0.0)
            fields["role"] = _choice(f"{model}: role", params.get("role", "utility"), ROLES)
        else:
            if params.get("fisher") is None:
                raise SSTError(f"{method}: input {model} needs the parameter 'fisher'")
            fields["fisher"] = str(params["fisher"])
        inputs[model] = InputSettings(**fields)
    if not inputs:
        raise SSTError(f"{method} needs at least one input besides the base model")
    if method in WITH_ROLES:
        safety = [str(model) for model, s in inputs.items() if s.role == "safety"]
        if len(safety) != 1:
            raise SSTError(
                f"{method} needs exactly one input with 'role: safety' (the other inputs are "
                f"utility inputs); got {len(safety)}" + (f": {', '.join(safety)}" if safety else "")
            )
    return inputs


def safety_input(inputs: Mapping[Hashable, InputSettings]) -> Hashable:
    """The id of the (single, already validated) ``role: safety`` input."""
    return next(model for model, s in inputs.items() if s.role == "safety")


def check_config_keys(config: Any, method: str) -> None:
    """Reject misspelled or misplaced parameter keys anywhere in a ``MergeConfiguration``.

    Top-level, module- and slice-level ``parameters`` may hold any parameter of ``method``
    (per-model ones act as defaults there); per-model/per-source ``parameters`` may only hold
    per-model ones — mergekit would silently ignore a shared parameter there.
    """
    specs = parameter_specs(method)
    every = {s.name for s in specs}
    per_model = {s.name for s in specs if s.scope != ParameterScope.SHARED}
    problems: list[str] = []

    def check(where: str, params: Mapping[str, Any] | None, allowed: set[str]) -> None:
        for key in params or {}:
            if key in allowed:
                continue
            if key in every:
                problems.append(
                    f"{where}: '{key}' is a shared parameter of {method}; mergekit ignores it "
                    "here — set it under the top-level 'parameters:'"
                )
                continue
            hint = difflib.get_close_matches(key, sorted(every), n=1)
            problems.append(
                f"{where}: unknown parameter '{key}' for {method}"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
            )

    def check_models(where: str, models: Any) -> None:
        for model_in in models or ():
            check(f"{where}model {model_in.model}", model_in.parameters, per_model)

    def check_slices(where: str, slices: Any) -> None:
        for index, slice_out in enumerate(slices or ()):
            check(f"{where}slices[{index}]", slice_out.parameters, every)
            for source in slice_out.sources:
                check(f"{where}slices[{index}] source {source.model}", source.parameters, per_model)

    check("parameters", config.parameters, every)
    check_models("", config.models)
    check_slices("", config.slices)
    for name, module in (config.modules or {}).items():
        check(f"modules.{name}.parameters", module.parameters, every)
        check_models(f"modules.{name}: ", module.models)
        check_slices(f"modules.{name}.", module.slices)
    if problems:
        raise SSTError("invalid merge configuration:\n  " + "\n  ".join(problems))
