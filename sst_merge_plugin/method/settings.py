"""The SST merge methods and their parameters: one table, one parser (``docs/design.md`` §4.4).

Every parameter is declared once in :data:`PARAMETERS` (name, type, per-model or shared, the
methods that take it, default, help); the selection parameters (``k``, ``energy``, ``ratio``,
``rho``) come from the selection-mode registry (:data:`~sst_merge_plugin.core.selection.
SELECT_MODES`). The hosts derive everything from this table: mergekit's ``MergeMethodSpec``
parameters and misspelled-key check (:mod:`sst_merge_plugin.mergekit.specs`), the FusionBench
algorithm's signature (:mod:`sst_merge_plugin.fusion_bench.algorithm`).

Values arrive from a host (mergekit: already resolved per tensor; FusionBench: from the config)
and :func:`parse_shared` / :func:`parse_inputs` turn them into validated, immutable
:class:`SharedSettings` / :class:`InputSettings` — the same code at planning time, inside the
per-tensor merge and in the FusionBench algorithm. Choices are ``str`` Enums
(:class:`~sst_merge_plugin.choice.Choice`).

Methods (:class:`Method`): ``sst_merge`` (SST projection with two Fishers), ``sst_single_fisher``
(projection with ``F_harm`` alone, the AlignGuard-LoRA/SafeAnchor ablation), ``sst_safe_lora``
(Safe LoRA / SafeMERGE cosine gate), ``sst_fisher_merge`` (diagonal-Fisher-weighted task
vectors).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sst_merge_plugin.choice import Choice, unknown_value
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.gevp import Solver
from sst_merge_plugin.core.projector import DEFAULT_DAMPING
from sst_merge_plugin.core.selection import SELECT_MODES, Selection, get_select_mode


class Method(Choice):
    """The merge methods this plugin registers in both hosts."""

    SST_MERGE = "sst_merge"
    SST_SINGLE_FISHER = "sst_single_fisher"
    SST_SAFE_LORA = "sst_safe_lora"
    SST_FISHER_MERGE = "sst_fisher_merge"

    @property
    def pretty_name(self) -> str:
        return PRETTY_NAMES[self]


PRETTY_NAMES = {
    Method.SST_MERGE: "SST-Merge (safety-subspace task merge)",
    Method.SST_SINGLE_FISHER: "Single-Fisher safety projection (AlignGuard-LoRA / SafeAnchor style)",
    Method.SST_SAFE_LORA: "Safe LoRA / SafeMERGE cosine-gated safety",
    Method.SST_FISHER_MERGE: "Diagonal-Fisher-weighted task vectors (Fisher merging)",
}
#: methods that project the safety patch with Fishers
PROJECTING = frozenset({Method.SST_MERGE, Method.SST_SINGLE_FISHER})
#: methods with one ``role: safety`` input and utility inputs
WITH_ROLES = frozenset({Method.SST_MERGE, Method.SST_SINGLE_FISHER, Method.SST_SAFE_LORA})
#: methods that read Fisher files
READING_FISHERS = PROJECTING | {Method.SST_FISHER_MERGE}


class ProjectSide(Choice):
    """Which deltas the projecting methods project (``docs/design.md`` §1.6)."""

    #: the safety patch, with (F_harm, F_benign) — the original SST-Merge
    SAFETY = "safety"
    #: each utility delta, with (its gain Fisher G_i, the cost Fisher C) — the dual
    UTILITY = "utility"
    #: both
    BOTH = "both"

    @property
    def safety(self) -> bool:
        return self in (ProjectSide.SAFETY, ProjectSide.BOTH)

    @property
    def utility(self) -> bool:
        return self in (ProjectSide.UTILITY, ProjectSide.BOTH)


class UtilityMerge(Choice):
    """mergekit's built-in combiner run on the utility inputs (``W_U``)."""

    TASK_ARITHMETIC = "task_arithmetic"
    TIES = "ties"
    DARE_TIES = "dare_ties"
    DARE_LINEAR = "dare_linear"


class MissingFisher(Choice):
    """What to do with a 2-D tensor that needs a Fisher but has no entry."""

    ERROR = "error"
    KEEP = "keep"
    DROP = "drop"


class AdapterMode(Choice):
    """``write_adapter``: also write a PEFT LoRA adapter of the safety patch or the whole delta."""

    NONE = "none"
    SAFETY = "safety"
    MERGED = "merged"


class Gate(Choice):
    """``sst_safe_lora``: Safe LoRA projection or SafeMERGE layer merge where the gate fires."""

    PROJECT = "project"
    MERGE = "merge"


class Role(Choice):
    """A non-base input's role in the methods with roles."""

    SAFETY = "safety"
    UTILITY = "utility"


#: a parameter without a default must be given
REQUIRED = object()


@dataclass(frozen=True)
class Parameter:
    """One parameter: ``per_model`` ones sit under each model's ``parameters:`` (a top-level
    value is their default), the others are shared (top-level only)."""

    name: str
    type: Any
    per_model: bool
    methods: frozenset[Method]
    default: Any = REQUIRED
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def _p(
    name: str,
    type_: Any,
    methods: Iterable[Method],
    default: Any = REQUIRED,
    help: str = "",
    per_model: bool = False,
) -> Parameter:
    return Parameter(name, type_, per_model, frozenset(methods), default, help)


def _selection_parameters() -> tuple[Parameter, ...]:
    return tuple(
        _p(
            mode.parameter,
            (int if mode.integer else float) | None,
            PROJECTING,
            None,
            f"select: {mode.name} — {mode.doc}",
        )
        for mode in SELECT_MODES.values()
        if mode.parameter
    )


ALL_METHODS = frozenset(Method)

#: every parameter of every method, declared once
PARAMETERS: tuple[Parameter, ...] = (
    _p(
        "project",
        str,
        PROJECTING,
        "safety",
        f"which deltas to project: {', '.join(ProjectSide.values())}",
    ),
    _p(
        "harm_fisher",
        str | None,
        PROJECTING,
        None,
        "F_harm file (refusal-loss Fisher on harmful prompts); project: safety or both",
    ),
    _p(
        "benign_fisher",
        str | None,
        {Method.SST_MERGE},
        None,
        "F_benign file (same kind as F_harm); project: safety or both",
    ),
    _p(
        "cost_fisher",
        str | None,
        PROJECTING,
        None,
        "C: the Fisher of the safety behaviour (project: utility or both)",
    ),
    _p("select", str, PROJECTING, "energy", f"selection mode: {', '.join(SELECT_MODES)}"),
    *_selection_parameters(),
    _p("damping", float, PROJECTING, DEFAULT_DAMPING, "relative damping ε of F + ε·(tr F/d)·I"),
    _p("solver", str, PROJECTING, "auto", f"eigensolver: {', '.join(Solver.values())}"),
    _p(
        "write_adapter",
        str,
        PROJECTING,
        "none",
        f"also write a PEFT adapter: {', '.join(AdapterMode.values())} (lora-kind Fishers)",
    ),
    _p("scale", float, WITH_ROLES, 1.0, "s in W0 + U + s·P(ΔW_s)"),
    _p(
        "utility_merge",
        str,
        WITH_ROLES,
        "task_arithmetic",
        f"combiner of the utility inputs: {', '.join(UtilityMerge.values())}",
    ),
    _p(
        "missing_fisher",
        str,
        READING_FISHERS,
        "error",
        f"2-D tensor without Fisher entries: {', '.join(MissingFisher.values())}",
    ),
    _p(
        "check_fingerprint",
        bool,
        READING_FISHERS,
        True,
        "refuse Fisher files whose model_fingerprint is not the base model's",
    ),
    _p("threshold", float, {Method.SST_SAFE_LORA}, help="cosine gate τ"),
    _p("gate", str, {Method.SST_SAFE_LORA}, "project", f"{', '.join(Gate.values())}"),
    _p("floor", float, {Method.SST_FISHER_MERGE}, 1e-6, "Fisher floor ε (relative)"),
    _p("normalise", bool, {Method.SST_FISHER_MERGE}, False, "divide each Fisher by its mean"),
    _p(
        "weight",
        float,
        ALL_METHODS,
        1.0,
        "input weight (safety input: a factor on its patch)",
        per_model=True,
    ),
    _p("density", float, WITH_ROLES, 1.0, "TIES/DARE density of a utility input", per_model=True),
    _p(
        "role",
        str,
        WITH_ROLES,
        "utility",
        f"{', '.join(Role.values())} (exactly one safety)",
        per_model=True,
    ),
    _p(
        "fisher",
        str,
        {Method.SST_FISHER_MERGE},
        help="this input's diagonal Fisher file",
        per_model=True,
    ),
    _p(
        "gain_fisher",
        str | None,
        {Method.SST_MERGE},
        None,
        "G_i: a utility input's task Fisher (project: utility or both)",
        per_model=True,
    ),
)


def method_parameters(method: str) -> tuple[Parameter, ...]:
    """The parameters of ``method``, in table order."""
    chosen = Method.parse("merge_method", method)
    return tuple(p for p in PARAMETERS if chosen in p.methods)


def check_type(parameter: Parameter, value: Any) -> Any:
    """``value`` validated (and coerced) against the parameter's type, as mergekit's own specs
    do (pydantic); :class:`SSTError` ``"<name>: invalid value …"`` otherwise."""
    try:
        return TypeAdapter(parameter.type).validate_python(value)
    except ValidationError as error:
        first = error.errors()[0]["msg"]
        raise SSTError(f"{parameter.name}: invalid value {value!r} ({first})") from None


@dataclass(frozen=True)
class SharedSettings:
    """Validated shared parameters of one method (fields a method does not take are ``None``)."""

    method: Method
    project: ProjectSide | None = None
    harm_fisher: str | None = None
    benign_fisher: str | None = None
    cost_fisher: str | None = None
    selection: Selection | None = None
    damping: float | None = None
    solver: Solver | None = None
    write_adapter: AdapterMode | None = None
    scale: float | None = None
    utility_merge: UtilityMerge | None = None
    missing_fisher: MissingFisher | None = None
    check_fingerprint: bool | None = None
    threshold: float | None = None
    gate: Gate | None = None
    floor: float | None = None
    normalise: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for the report (``None`` fields left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "selection"}
        if self.selection is not None:
            out["selection"] = self.selection.as_dict()
        return out


@dataclass(frozen=True)
class InputSettings:
    """Validated per-model parameters of one (non-base) input."""

    weight: float = 1.0
    density: float = 1.0
    role: Role = Role.UTILITY
    fisher: str | None = None
    gain_fisher: str | None = None


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
    mode = get_select_mode(_mode_name(values.get("select", "energy")))
    given = {p: values.get(p) for p in (m.parameter for m in SELECT_MODES.values()) if p}
    if mode.parameter and given[mode.parameter] is None:
        given[mode.parameter] = mode.default
    try:
        return Selection.create(mode.name, **given)
    except SSTError as error:
        raise SSTError(f"select: {error}") from None


def _mode_name(value: Any) -> str:
    if value not in SELECT_MODES:
        raise unknown_value("select", value, tuple(SELECT_MODES))
    return value


def parse_shared(method: str, values: Mapping[str, Any]) -> SharedSettings:
    """Validate the resolved shared parameters of ``method`` (raises :class:`SSTError`).

    ``values`` maps parameter names to values; parameters left out (or ``None``) take their
    defaults, and a required one that is missing is an error.
    """
    method = Method.parse("merge_method", method)
    resolved: dict[str, Any] = {}
    for parameter in method_parameters(method):
        if parameter.per_model:
            continue
        if values.get(parameter.name) is not None:
            resolved[parameter.name] = values[parameter.name]
        elif parameter.required:
            raise SSTError(f"{method} needs the parameter '{parameter.name}'")
        else:
            resolved[parameter.name] = parameter.default
    fields: dict[str, Any] = {"method": method}
    if method in PROJECTING:
        side = ProjectSide.parse("project", resolved["project"])
        fields["project"] = side
        files = {"harm_fisher": side.safety, "cost_fisher": side.utility}
        if method == Method.SST_MERGE:
            files["benign_fisher"] = side.safety
        for name, needed in files.items():
            if needed and resolved[name] is None:
                raise SSTError(f"{method} needs the parameter '{name}' (project: {side})")
            if not needed and resolved[name] is not None:
                raise SSTError(f"{name} does not apply with project: {side}")
            fields[name] = None if resolved[name] is None else str(resolved[name])
        fields["selection"] = _selection(resolved)
        fields["damping"] = _finite("damping", resolved["damping"], 0.0)
        fields["solver"] = Solver.parse("solver", resolved["solver"])
        fields["write_adapter"] = AdapterMode.parse("write_adapter", resolved["write_adapter"])
        if fields["write_adapter"] == AdapterMode.SAFETY and not side.safety:
            raise SSTError(
                f"write_adapter: safety writes the projected safety patch; project: {side} "
                "does not project it (use write_adapter: merged)"
            )
    if method in WITH_ROLES:
        fields["scale"] = _finite("scale", resolved["scale"])
        fields["utility_merge"] = UtilityMerge.parse("utility_merge", resolved["utility_merge"])
    if method in READING_FISHERS:
        fields["missing_fisher"] = MissingFisher.parse("missing_fisher", resolved["missing_fisher"])
        fields["check_fingerprint"] = _flag("check_fingerprint", resolved["check_fingerprint"])
    if method == Method.SST_SAFE_LORA:
        fields["threshold"] = _finite("threshold", resolved["threshold"])
        fields["gate"] = Gate.parse("gate", resolved["gate"])
    if method == Method.SST_FISHER_MERGE:
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
    method = Method.parse("merge_method", method)
    inputs: dict[Hashable, InputSettings] = {}
    for model, params in values.items():
        fields: dict[str, Any] = {"weight": _finite(f"{model}: weight", params.get("weight", 1.0))}
        if method in WITH_ROLES:
            fields["density"] = _finite(f"{model}: density", params.get("density", 1.0), 0.0)
            fields["role"] = Role.parse(f"{model}: role", params.get("role", "utility"))
            if params.get("gain_fisher") is not None:
                fields["gain_fisher"] = str(params["gain_fisher"])
        else:
            if params.get("fisher") is None:
                raise SSTError(f"{method}: input {model} needs the parameter 'fisher'")
            fields["fisher"] = str(params["fisher"])
        inputs[model] = InputSettings(**fields)
    if not inputs:
        raise SSTError(f"{method} needs at least one input besides the base model")
    if method in WITH_ROLES:
        safety = [str(model) for model, s in inputs.items() if s.role == Role.SAFETY]
        if len(safety) != 1:
            raise SSTError(
                f"{method} needs exactly one input with 'role: safety' (the other inputs are "
                f"utility inputs); got {len(safety)}" + (f": {', '.join(safety)}" if safety else "")
            )
    return inputs


def safety_input(inputs: Mapping[Hashable, InputSettings]) -> Hashable:
    """The id of the (single, already validated) ``role: safety`` input."""
    return next(model for model, s in inputs.items() if s.role == Role.SAFETY)
