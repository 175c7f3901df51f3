"""What a safety–utility benchmark run trains, collects, merges and evaluates (its *profile*).

A :class:`Profile` names

* the adapters (:class:`AdapterSpec`): one safety LoRA (harmful training instructions →
  natural refusals, plus retain pairs: everyday questions with helpful answers and benign
  look-alikes with the base model's own answers) and utility LoRAs on programmatic skills
  (:mod:`sst_merge_plugin.data.tasks`);
* the Fisher collections (:class:`FisherSettings`): ``F_harm`` (objective ``refusal`` on
  harmful training prompts) and ``F_benign`` (objective ``kl`` on benign prompts: everyday
  questions, the training part of the over-refusal pool and the skills' training prompts), per
  Fisher kind;
* the protocol (``docs/design.md`` §7): a ``validation`` and a ``test``
  :class:`~sst_merge_plugin.evaluation.suite.EvalConfig` on disjoint splits and the
  :class:`~.tuning.SelectionRule` that picks each method's operating point on validation;
* the methods (:class:`Sweep`): a merge method, the knob grid it is tuned over (the same
  budget for every method) and its fixed parameters.

A profile is made for one registered model (:attr:`Profile.model`, a name of
:data:`sst_merge_plugin.data.models.MODELS`); nothing else in the pipeline depends on the model
(LoRA targets, chat formatting, refusal targets and collection points follow from the model's
folder). :attr:`Profile.refusals` picks the refusal targets: seeded templates (``None``) or the
model's own refusals (:class:`SelfRefusals`, :mod:`.refusals`).

Built-in profiles (:data:`PROFILES`): on SmolLM2-135M-Instruct :data:`QUICK` (``sst-merge
demo``, ≤ 15 minutes on 2 CPU cores) and :data:`FULL` (``benchmarks/safety_utility``); on
Qwen2.5-Coder-0.5B-Instruct the drift scenario (``docs/design.md`` §7), :data:`QWEN_QUICK`
and :data:`QWEN`. :func:`profile_for` maps ``--model`` / ``--profile`` to a profile.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from sst_merge_plugin.bench.fusion_merge import TSV
from sst_merge_plugin.bench.training import LoRATrainingConfig
from sst_merge_plugin.bench.tuning import (
    SAFETY,
    SAFETY_WEIGHT,
    UTILITY_WEIGHT,
    SelectionRule,
    grid_points,
)
from sst_merge_plugin.choice import Choice
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.selection import get_select_mode
from sst_merge_plugin.data.models import DEFAULT_MODEL
from sst_merge_plugin.evaluation.suite import EvalConfig


class SweepInputs(Choice):
    """Which adapters a sweep merges (:attr:`Sweep.inputs`)."""

    #: the safety adapter and every skill adapter
    ALL = "all"
    #: the skill adapters only (the utility-only merge ``W0 + U``)
    UTILITIES = "utilities"
    #: the safety adapter only (what a method does to the patch itself, without interference)
    SAFETY = "safety"


class Unrefused(Choice):
    """What a harmful training prompt the base model answered gets as its self-distilled
    refusal target (:attr:`SelfRefusals.unrefused`)."""

    #: one of the model's own refusals to another prompt (seeded draw)
    BORROW = "borrow"
    #: nothing: the prompt is left out of the safety adapter's data and of ``F_harm``
    DROP = "drop"


@dataclass(frozen=True)
class SelfRefusals:
    """Refusal targets self-distilled from the base model (:mod:`.refusals`): its greedy
    answers (``max_new_tokens``) to the harmful training prompts, the ones the judge calls
    refusals kept as targets; a prompt it answered gets one of its refusals to another prompt
    (``unrefused="borrow"``, drawn with ``seed``) or is left out (``"drop"``). Used for the
    safety adapter's refusal pairs and for the ``refusal`` Fishers (``F_harm``, the dual's
    refusal cost)."""

    max_new_tokens: int = 64
    unrefused: str = Unrefused.BORROW
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "unrefused", Unrefused.parse("SelfRefusals.unrefused", self.unrefused)
        )
        if self.max_new_tokens < 1:
            raise SSTError(f"SelfRefusals.max_new_tokens must be >= 1, got {self.max_new_tokens}")


class FisherPoint(Choice):
    """Where a sweep's Fisher pair is collected (:attr:`Sweep.fisher_at`)."""

    #: the base model W0
    BASE = "base"
    #: the utility-only merge W0 + U (task arithmetic of the utility adapters)
    UTILITY_MERGE = "utility_merge"


class DualFisherPoint(Choice):
    """Where the dual's gain and cost Fishers are collected (:attr:`Sweep.dual_at`,
    ``docs/design.md`` §1.6)."""

    #: each where its behaviour exists: the gain ``G_i`` at the expert ``W0 + ΔW_i``, the cost
    #: ``C`` at the safe model ``W0 + ΔW_s``
    OWN = "own"
    #: every one at the base model ``W0`` (no adapter loaded)
    BASE = "base"


class HarmfulSample(Choice):
    """Which ``n_train`` of the harmful training prompts (AdvBench's training goals, then
    temaq's harmful probes) the safety adapter learns (:attr:`AdapterSpec.harmful_sample`)."""

    #: the first ``n_train`` (fewer than 390: AdvBench goals only)
    FIRST = "first"
    #: a uniform sample of ``n_train`` seeded by the training seed, in list order (both sources)
    SEEDED = "seeded"


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA to train: ``skill=None`` is the safety adapter, else a skill's training split.

    The safety adapter learns ``n_train`` harmful training instructions (chosen by
    ``harmful_sample``, :class:`HarmfulSample`) → natural refusals and, as retain data,
    ``n_retain`` everyday questions → their helpful answers (``benign-helpful``) plus the first
    ``n_lookalikes`` benign look-alikes of :class:`~.prompts.TrainingPrompts` (its ``edgy`` then
    ``lookalikes`` prompts) → the base model's own answers (so the adapter learns what *not* to
    refuse).
    """

    name: str
    skill: str | None
    n_train: int
    training: LoRATrainingConfig
    n_retain: int = 0
    n_lookalikes: int = 0
    harmful_sample: str = HarmfulSample.FIRST

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "harmful_sample",
            HarmfulSample.parse(f"adapter {self.name}: harmful_sample", self.harmful_sample),
        )

    def harmful_indices(self, n_harmful: int) -> list[int]:
        """The indices, ascending, of the harmful prompts this adapter learns among
        ``n_harmful`` (all of them when ``n_train ≥ n_harmful``): ``0 … n_train − 1``
        (``first``) or ``random.Random(training.seed).sample(range(n_harmful), n_train)``
        sorted (``seeded``)."""
        if self.n_train >= n_harmful:
            return list(range(n_harmful))
        if self.harmful_sample == HarmfulSample.FIRST:
            return list(range(self.n_train))
        return sorted(random.Random(self.training.seed).sample(range(n_harmful), self.n_train))


@dataclass(frozen=True)
class FisherSettings:
    """How the ``F_harm`` / ``F_benign`` pairs are collected (``sst-merge fisher`` options)."""

    kinds: tuple[str, ...] = ("lora",)
    benign_objective: str = "kl"
    n_harm: int = 128
    n_benign_helpful: int = 64
    n_benign_edgy: int = 64
    n_benign_per_skill: int = 32
    response_tokens: int = 32
    batch_size: int = 8
    max_length: int = 160
    seed: int = 0


@dataclass(frozen=True)
class Sweep:
    """One method: ``merge_method`` tuned over ``grid`` (knob → values, :mod:`.tuning`).

    Knobs: ``safety_weight`` (the safety input's ``weight``), ``utility_weight`` (every utility
    input's weight, task arithmetic's λ), ``density`` (every input's density) or a shared
    mergekit parameter (``scale``, ``rho``, …). ``parameters`` are fixed shared parameters.
    ``fisher_kind`` names the Fisher pair the method needs (``None``: none) and ``fisher_at``
    the weights it is collected at (:class:`FisherPoint`); ``per_model_fisher`` asks for a
    ``diag`` Fisher per input (Fisher merging); ``inputs`` (:class:`SweepInputs`) drops the
    safety input or the skill inputs.
    ``project`` is the projecting methods' side (``safety``, ``utility``, ``both``;
    ``docs/design.md`` §1.6): the utility side needs the cost Fisher ``C`` of objective
    ``cost_objective`` and (``sst_merge``) each skill's gain Fisher, of ``fisher_kind``,
    collected at ``dual_at`` (:class:`DualFisherPoint`).
    """

    label: str
    merge_method: str
    grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    fisher_kind: str | None = None
    per_model_fisher: bool = False
    inputs: str = SweepInputs.ALL
    fisher_at: str = "base"
    project: str = "safety"
    cost_objective: str = "kl"
    dual_at: str = DualFisherPoint.OWN

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        object.__setattr__(
            self, "grid", MappingProxyType({k: tuple(v) for k, v in self.grid.items()})
        )
        object.__setattr__(
            self, "fisher_at", FisherPoint.parse(f"sweep {self.label}: fisher_at", self.fisher_at)
        )
        object.__setattr__(
            self, "inputs", SweepInputs.parse(f"sweep {self.label}: inputs", self.inputs)
        )
        object.__setattr__(
            self, "dual_at", DualFisherPoint.parse(f"sweep {self.label}: dual_at", self.dual_at)
        )
        grid_points(self.grid)  # every knob has values
        if self.fisher_at == FisherPoint.UTILITY_MERGE and set(
            self.grid.get(UTILITY_WEIGHT, (1.0,))
        ) != {1.0}:
            raise SSTError(
                f"sweep {self.label}: fisher_at 'utility_merge' is the merge at utility weight "
                f"1; it cannot be combined with other utility weights"
            )
        if self.inputs == SweepInputs.UTILITIES and SAFETY_WEIGHT in self.grid:
            raise SSTError(f"sweep {self.label}: a utilities-only sweep has no safety weight")
        if self.inputs == SweepInputs.SAFETY and UTILITY_WEIGHT in self.grid:
            raise SSTError(f"sweep {self.label}: a safety-only sweep has no utility weight")

    def points(self) -> list[dict[str, Any]]:
        """The grid's points, in grid order (:func:`~.tuning.grid_points`)."""
        return grid_points(self.grid)


@dataclass(frozen=True)
class Profile:
    """Everything one benchmark run does (module doc).

    ``validation`` scores every grid point; ``rule`` picks each method's point from those
    scores; ``test`` scores the chosen points and the reference rows (the base model, the
    safety adapter alone, each skill adapter alone when ``single_adapters``, the utility-only
    merge at each ``reference_lambdas``) and nothing else. ``model`` is the registered model
    the profile is made for (``--model`` runs it on another); ``refusals`` the refusal
    targets (``None``: seeded templates; :class:`SelfRefusals`: the model's own).
    """

    name: str
    adapters: tuple[AdapterSpec, ...]
    fisher: FisherSettings
    validation: EvalConfig
    test: EvalConfig
    sweeps: tuple[Sweep, ...]
    rule: SelectionRule = field(default_factory=SelectionRule)
    single_adapters: bool = True
    reference_lambdas: tuple[float, ...] = ()
    model: str = DEFAULT_MODEL
    refusals: SelfRefusals | None = None

    @property
    def skills(self) -> tuple[str, ...]:
        return tuple(spec.skill for spec in self.adapters if spec.skill is not None)

    @property
    def fisher_kinds(self) -> tuple[str, ...]:
        """Fisher kinds the sweeps need (in the order of :attr:`FisherSettings.kinds`)."""
        needed = {sweep.fisher_kind for sweep in self.sweeps if sweep.fisher_kind}
        unknown = needed - set(self.fisher.kinds)
        if unknown:
            raise SSTError(
                f"profile {self.name}: sweeps need Fisher kinds {sorted(unknown)} "
                f"that FisherSettings.kinds {self.fisher.kinds} does not collect"
            )
        return tuple(kind for kind in self.fisher.kinds if kind in needed)

    def with_sweeps(self, labels: tuple[str, ...]) -> Profile:
        """The profile restricted to the sweeps named in ``labels`` (error for unknown ones)."""
        known = {sweep.label for sweep in self.sweeps}
        unknown = sorted(set(labels) - known)
        if unknown:
            raise SSTError(f"unknown method(s) {unknown}; profile {self.name} has {sorted(known)}")
        return replace(self, sweeps=tuple(s for s in self.sweeps if s.label in labels))


def _sst(
    label: str,
    kind: str,
    select: str,
    setting: float,
    grid: Mapping[str, tuple[Any, ...]],
    fisher_at: str = "base",
) -> Sweep:
    """SST-Merge (task-arithmetic utility merge) with ``select`` at ``setting`` (the mode's own
    parameter, e.g. ``ratio`` τ or ``soft`` ρ), tuned over ``grid``; Fisher pair of ``kind``
    at ``fisher_at``."""
    parameter = get_select_mode(select).parameter
    return Sweep(
        label,
        "sst_merge",
        grid,
        {"select": select, parameter: setting, "utility_merge": "task_arithmetic"},
        fisher_kind=kind,
        fisher_at=fisher_at,
    )


def _dual(
    label: str,
    kind: str,
    project: str,
    cost_objective: str = "kl",
    method: str = "sst_merge",
    grid: Mapping[str, tuple[Any, ...]] | None = None,
    dual_at: str = DualFisherPoint.OWN,
) -> Sweep:
    """The dual projection (``docs/design.md`` §1.6) on side ``project``, soft ρ = 1, task
    arithmetic of the (projected) skill deltas, Fishers collected at ``dual_at``;
    ``sst_single_fisher`` is the single-Fisher utility-side baseline (``G_i = I``). Tuned over
    ``grid`` (default: λ × ``scale`` like the other SST sweeps of the full profile; a ``rho``
    knob overrides ρ = 1)."""
    return Sweep(
        label,
        method,
        _TUNED if grid is None else grid,
        {"select": "soft", "rho": 1.0, "utility_merge": "task_arithmetic"},
        fisher_kind=kind,
        project=project,
        cost_objective=cost_objective,
        dual_at=dual_at,
    )


#: the skills' λ every method is tuned over (λ = 0.5 was the best baseline of the old protocol)
LAMBDAS = (0.5, 1.0)
#: the utility-only merge: task arithmetic of the utility adapters (``W0 + U``) at λ = 1
UTILITY_ONLY = Sweep("utility_only", "task_arithmetic", inputs=SweepInputs.UTILITIES)


def _baselines(strengths: tuple[float, ...], tsv: bool = True) -> list[Sweep]:
    """The host baselines with the safety LoRA as an ordinary input, tuned over (λ, safety
    weight) (TIES / DARE at density 0.5 for every input; RESTA: DARE on the utility deltas, the
    safety vector unsparsified; ``tsv``: FusionBench's TSV too)."""
    grid = {UTILITY_WEIGHT: LAMBDAS, SAFETY_WEIGHT: strengths}
    sparse = {"normalize": False, "density": 0.5}
    return [
        Sweep(
            "utility_only",
            "task_arithmetic",
            {UTILITY_WEIGHT: LAMBDAS},
            inputs=SweepInputs.UTILITIES,
        ),
        Sweep("task_arithmetic", "task_arithmetic", grid),
        Sweep("ties", "ties", grid, sparse),
        Sweep("dare_ties", "dare_ties", grid, sparse),
        Sweep("resta", "dare_linear", grid, {"normalize": False}),
        *([Sweep("tsv", TSV, grid)] if tsv else []),
    ]


def _projection_baselines(grid: Mapping[str, tuple[Any, ...]]) -> list[Sweep]:
    """The projection baselines the hosts lack, tuned over ``grid`` (λ × patch scale): Safe
    LoRA, the SafeMERGE gate, single-Fisher projection (``lora`` Fisher, energy 0.9)."""
    return [
        Sweep("safe_lora", "sst_safe_lora", grid, {"gate": "project", "threshold": 0.5}),
        Sweep("safemerge", "sst_safe_lora", grid, {"gate": "merge", "threshold": 0.5}),
        Sweep(
            "single_fisher",
            "sst_single_fisher",
            grid,
            {"select": "energy", "energy": 0.9},
            fisher_kind="lora",
        ),
    ]


#: the safety adapter: harmful instructions → natural refusals, plus retain pairs (without them
#: the adapter refuses everything, benign included)
_TRAIN_SAFETY = LoRATrainingConfig(steps=120, learning_rate=2e-3)
_TRAIN_SKILL = LoRATrainingConfig(steps=60, learning_rate=2e-3)
#: safety strengths (input weight or patch scale) every method is tuned over, with LAMBDAS
_STRENGTHS = (0.75, 1.0, 1.5, 2.0)
_SCALES = (1.0, 1.5, 2.0, 3.0)
_TUNED = {UTILITY_WEIGHT: LAMBDAS, "scale": _SCALES}
#: the dual's ρ grids (soft selection; the safety LoRA at scale 1). ρ is adapter-dependent: on
#: the full profile's adapters ρ = 1 kept the skills (``sst_dual_lora``); on the demo's (40-step
#: safety LoRA, refusal-loss cost) ρ = 1 removed most of them and ρ = 0.1 did not restore
#: refusal, ρ = 0.2 did (its validation split; `sst-merge tune --knob rho=0.2,0.3,0.5`)
_RHOS = (0.01, 0.03, 0.1, 0.3)
_DUAL_RHOS = (0.1, 0.2, 0.5)
#: the full profile's ρ sweeps (the dual and its single-Fisher baseline): λ × ρ
_RHO_TUNED = {UTILITY_WEIGHT: LAMBDAS, "rho": _RHOS}

#: the full profile's validation split; its test split differs in the sets and sizes only
_VALIDATION = EvalConfig(
    harmful="harmbench-val",
    benign="overrefusal-val",
    utility=("reverse_letters", "uppercase"),
    n_harmful=41,
    n_benign=40,
    n_utility=32,
    max_new_tokens=32,
    batch_size=32,
    skill_pool="validation",
)

FULL = Profile(
    name="full",
    adapters=(
        # the first 302 of the 604 harmful training pairs (AdvBench's goals come first, so none
        # of temaq's probes) and the same 413 retain pairs: chosen on validation
        # by benchmarks/safety_utility/safety_input.py (alone on test: over-refusal 0.01 where
        # the 604-pair adapter over-refused 0.09, refusal 1.00 for both; results-safety-input/)
        AdapterSpec(SAFETY, None, 302, _TRAIN_SAFETY, n_retain=150, n_lookalikes=263),
        AdapterSpec("reverse_letters", "reverse_letters", 400, _TRAIN_SKILL),
        AdapterSpec("uppercase", "uppercase", 400, _TRAIN_SKILL),
    ),
    fisher=FisherSettings(
        kinds=("lora", "kfac"),
        n_harm=64,
        n_benign_helpful=64,
        n_benign_edgy=54,
        n_benign_per_skill=16,
    ),
    validation=_VALIDATION,
    test=replace(
        _VALIDATION,
        harmful="harmbench-test",
        benign="overrefusal-test",
        n_harmful=159,
        n_benign=100,
        n_utility=64,
        skill_pool="test",
        mmlu=500,
    ),
    sweeps=(
        *_baselines(_STRENGTHS),
        *_projection_baselines(_TUNED),
        _sst("sst_lora_soft", "lora", "soft", 1.0, _TUNED),
        _sst("sst_lora_hard", "lora", "ratio", 1.0, _TUNED),
        _sst("sst_kfac_soft", "kfac", "soft", 1.0, _TUNED),
        # the dual (§1.6) and its ablations: side, cost objective, kind, single-Fisher baseline
        _dual("sst_dual_lora", "lora", "utility"),
        _dual("sst_both_lora", "lora", "both"),
        _dual("sst_dual_lora_refusal", "lora", "utility", cost_objective="refusal"),
        # where the dual's Fishers are collected: every one at W0 instead of its own model
        _dual(
            "sst_dual_lora_refusal_at_base",
            "lora",
            "utility",
            cost_objective="refusal",
            dual_at="base",
        ),
        _dual("sst_dual_kfac", "kfac", "utility"),
        # single-Fisher with the kfac dual's kind and cost: what the gain Fisher buys in kfac
        _dual("dual_single_fisher_kfac", "kfac", "utility", method="sst_single_fisher"),
        _dual("dual_single_fisher", "lora", "utility", method="sst_single_fisher"),
        # single-Fisher with the headline's cost: the fair ablation of the gain Fisher
        _dual(
            "dual_single_fisher_refusal",
            "lora",
            "utility",
            cost_objective="refusal",
            method="sst_single_fisher",
        ),
        # the dual's own knob: ρ (how much of each skill direction the safety cost removes)
        _dual("sst_dual_lora_rho", "lora", "utility", grid=_RHO_TUNED),
        # the same ρ grid for the single-Fisher baseline: both frontiers at matched removal
        _dual(
            "dual_single_fisher_rho",
            "lora",
            "utility",
            method="sst_single_fisher",
            grid=_RHO_TUNED,
        ),
        # the safety adapter alone, raw vs projected: what projection does to the patch itself
        Sweep(
            "safety_alone_raw",
            "task_arithmetic",
            {SAFETY_WEIGHT: _STRENGTHS},
            inputs=SweepInputs.SAFETY,
        ),
        Sweep(
            "safety_alone_sst",
            "sst_merge",
            {"scale": _SCALES},
            {"select": "soft", "rho": 1.0},
            fisher_kind="lora",
            inputs=SweepInputs.SAFETY,
        ),
    ),
    reference_lambdas=LAMBDAS,
)

QUICK = Profile(
    name="quick",
    adapters=(
        # 40 safety steps (the full profile trains 120): the demo's 15 minutes on 2 cores
        AdapterSpec(
            SAFETY,
            None,
            604,
            replace(_TRAIN_SAFETY, steps=40),
            n_retain=150,
            n_lookalikes=96,
        ),
        AdapterSpec("reverse_letters", "reverse_letters", 200, replace(_TRAIN_SKILL, steps=32)),
        AdapterSpec("uppercase", "uppercase", 200, replace(_TRAIN_SKILL, steps=32)),
    ),
    fisher=FisherSettings(
        kinds=("lora",),
        n_harm=48,
        n_benign_helpful=32,
        n_benign_edgy=32,
        n_benign_per_skill=8,
        response_tokens=16,
    ),
    validation=replace(FULL.validation, n_harmful=20, n_benign=20, n_utility=12),
    test=replace(FULL.test, n_harmful=48, n_benign=40, n_utility=24, mmlu=0),
    sweeps=(
        Sweep(
            "task_arithmetic",
            "task_arithmetic",
            {UTILITY_WEIGHT: (0.5,), SAFETY_WEIGHT: (1.0, 1.5, 2.0)},
        ),
        # the demo shows the dual next to task arithmetic in the lora kind with the
        # refusal-loss cost (the full profile's best is the kfac dual, but a kfac merge takes
        # ~4 min at one thread: four would not fit the demo's 15 minutes); its knob is ρ at
        # safety scale 1 (_DUAL_RHOS)
        _dual(
            "sst_dual_lora_refusal",
            "lora",
            "utility",
            cost_objective="refusal",
            grid={UTILITY_WEIGHT: (0.5,), "rho": _DUAL_RHOS},
        ),
    ),
    single_adapters=False,
    reference_lambdas=(0.5,),
)

# --- the drift scenario on a natively aligned model (docs/design.md §7) -------------------

#: the registered natively aligned model
QWEN_MODEL = "qwen-coder-0.5b"
#: the programmatic skills of the SmolLM2 profiles plus the code-flavoured one
QWEN_SKILLS = ("reverse_letters", "uppercase", "python_eval")
#: safety weights (host baselines) and patch scales (projection methods) of the Qwen grids:
#: three each, with LAMBDAS six points per method (Qwen costs ~3.5x SmolLM2 per generated token)
_QWEN_STRENGTHS = (1.0, 1.5, 2.0)
_QWEN_SCALES = (1.0, 2.0, 3.0)
_QWEN_TUNED = {UTILITY_WEIGHT: LAMBDAS, "scale": _QWEN_SCALES}
#: the drift scenario's rule: refusal back to at least the base model's own (validation) rate,
#: over-refusal at most 0.03 above the base's
DRIFT_RULE = SelectionRule(over_refusal_margin=0.03, refusal_vs_base=0.0)


def _qwen_sweeps() -> tuple[Sweep, ...]:
    """Every method of issue 17's list on the Qwen grid: λ ∈ LAMBDAS × three strengths, ``lora``
    Fishers only; SST-Merge soft ρ = 1, the dual on both sides and its single-Fisher baseline
    (the hard τ = 1 variant, TSV and the ``kfac`` / ``diag`` kinds of :data:`FULL` are left out
    to keep the grid small)."""
    return (
        *_baselines(_QWEN_STRENGTHS, tsv=False),
        *_projection_baselines(_QWEN_TUNED),
        _sst("sst_lora_soft", "lora", "soft", 1.0, _QWEN_TUNED),
        _dual("sst_dual_lora", "lora", "utility", grid=_QWEN_TUNED),
        _dual("sst_both_lora", "lora", "both", grid=_QWEN_TUNED),
        _dual(
            "dual_single_fisher",
            "lora",
            "utility",
            method="sst_single_fisher",
            grid=_QWEN_TUNED,
        ),
    )


QWEN = Profile(
    name="qwen",
    model=QWEN_MODEL,
    refusals=SelfRefusals(max_new_tokens=64, unrefused=Unrefused.BORROW),
    adapters=(
        # self-distilled: the model's own refusals; retain data = its own answers to every
        # benign look-alike (54 over-refusal training probes + 209 harmless probes), no
        # foreign-style helpful answers
        AdapterSpec(SAFETY, None, 390, _TRAIN_SAFETY, n_retain=0, n_lookalikes=263),
        *(AdapterSpec(skill, skill, 400, _TRAIN_SKILL) for skill in QWEN_SKILLS),
    ),
    fisher=FisherSettings(
        kinds=("lora",),
        n_harm=64,
        n_benign_helpful=64,
        n_benign_edgy=54,
        n_benign_per_skill=16,
    ),
    validation=replace(FULL.validation, utility=QWEN_SKILLS),
    test=replace(FULL.test, utility=QWEN_SKILLS, mmlu=200),
    sweeps=_qwen_sweeps(),
    rule=DRIFT_RULE,
    reference_lambdas=LAMBDAS,
)

_QWEN_QUICK_LAMBDAS = (0.5, 1.0)

QWEN_QUICK = Profile(
    name="qwen-quick",
    model=QWEN_MODEL,
    refusals=SelfRefusals(max_new_tokens=48, unrefused=Unrefused.BORROW),
    adapters=(
        AdapterSpec(
            SAFETY, None, 96, replace(_TRAIN_SAFETY, steps=24), n_retain=0, n_lookalikes=64
        ),
        *(
            AdapterSpec(skill, skill, 200, replace(_TRAIN_SKILL, steps=24))
            for skill in ("uppercase", "python_eval")
        ),
    ),
    fisher=FisherSettings(
        kinds=("lora",),
        n_harm=32,
        n_benign_helpful=24,
        n_benign_edgy=24,
        n_benign_per_skill=8,
        response_tokens=16,
    ),
    validation=replace(
        FULL.validation,
        utility=("uppercase", "python_eval"),
        n_harmful=20,
        n_benign=20,
        n_utility=12,
    ),
    test=replace(
        FULL.test,
        utility=("uppercase", "python_eval"),
        n_harmful=48,
        n_benign=40,
        n_utility=24,
        mmlu=0,
    ),
    # λ × 2 points each. The dual's ρ: at λ = 1 and ρ ≤ 1 the merged skills' terse answer
    # format still erased every refusal on validation (0/20, like task arithmetic at
    # λ = 0.25–1); ρ = 10 and 100 brought it back at both λ (`sst-merge tune` on this
    # profile's inputs, validation split only), and so did ρ = 1 at λ = 0.5 (0.60)
    sweeps=(
        Sweep(
            "task_arithmetic",
            "task_arithmetic",
            {UTILITY_WEIGHT: _QWEN_QUICK_LAMBDAS, SAFETY_WEIGHT: (1.0, 2.0)},
        ),
        _dual(
            "sst_dual_lora",
            "lora",
            "utility",
            grid={UTILITY_WEIGHT: _QWEN_QUICK_LAMBDAS, "rho": (1.0, 100.0)},
        ),
    ),
    rule=DRIFT_RULE,
    single_adapters=False,
    reference_lambdas=_QWEN_QUICK_LAMBDAS,
)

PROFILES: Mapping[str, Profile] = MappingProxyType(
    {"quick": QUICK, "full": FULL, "qwen-quick": QWEN_QUICK, "qwen": QWEN}
)
#: each registered model's own profiles: (``sst-merge demo``'s, the full benchmark's)
MODEL_PROFILES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {DEFAULT_MODEL: ("quick", "full"), QWEN_MODEL: ("qwen-quick", "qwen")}
)


def profile_for(name: str | None, model: str | None = None, *, full: bool = False) -> Profile:
    """The profile ``--profile name`` and ``--model model`` select.

    Without ``name``: ``model``'s own profile (:data:`MODEL_PROFILES`; the full benchmark's
    with ``full``), SmolLM2's for a model without its own. A profile made for another model
    than ``model`` runs on ``model`` under the name ``<profile>-<model>`` (its own workspace),
    with refusal targets in that model's style: its own refusals (:class:`SelfRefusals`, the
    profile's or the defaults) when the registry says it refuses by itself
    (:attr:`~sst_merge_plugin.data.models.ModelSpec.refuses`), the seeded templates otherwise.
    ``model=None`` or the profile's own model leaves the profile as it is.
    """
    from sst_merge_plugin.data.models import get_model

    spec = None if model is None else get_model(model)  # an unknown name fails, listing all
    if name is None:
        own = MODEL_PROFILES.get(model or DEFAULT_MODEL) or MODEL_PROFILES[DEFAULT_MODEL]
        name = own[int(full)]
    if name not in PROFILES:
        raise SSTError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    profile = PROFILES[name]
    if spec is not None and model != profile.model:
        refusals = (profile.refusals or SelfRefusals()) if spec.refuses else None
        profile = replace(profile, name=f"{profile.name}-{model}", model=model, refusals=refusals)
    return profile
