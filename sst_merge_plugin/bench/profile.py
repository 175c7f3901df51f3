"""What a safety–utility benchmark run trains, collects, merges and evaluates (its *profile*).

A :class:`Profile` names

* the adapters (:class:`AdapterSpec`): one safety LoRA (AdvBench training split → natural
  refusals, plus everyday questions → helpful answers as retain data) and utility LoRAs on
  programmatic skills (:mod:`sst_merge_plugin.data.tasks`);
* the Fisher collections (:class:`FisherSettings`): ``F_harm`` (objective ``refusal`` on the
  AdvBench training split) and ``F_benign`` (objective ``kl`` on benign prompts: everyday
  questions, the training part of the benign-edgy probes and the skills' training prompts), per
  Fisher kind;
* the evaluation (:class:`~sst_merge_plugin.evaluation.suite.EvalConfig`);
* the method sweeps (:class:`Sweep`): a merge method, the knob it sweeps and fixed parameters.

Two built-in profiles: :data:`QUICK` (``sst-merge demo``, ~10 minutes on 2 CPU cores) and
:data:`FULL` (``benchmarks/safety_utility``, every method with a curve).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from sst_merge_plugin.bench.training import LoRATrainingConfig
from sst_merge_plugin.choice import Choice
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.selection import get_select_mode
from sst_merge_plugin.evaluation.suite import EvalConfig

SAFETY = "safety"


class FisherPoint(Choice):
    """Where a sweep's Fisher pair is collected (:attr:`Sweep.fisher_at`)."""

    #: the base model W0
    BASE = "base"
    #: the utility-only merge W0 + U (task arithmetic of the utility adapters)
    UTILITY_MERGE = "utility_merge"


@dataclass(frozen=True)
class AdapterSpec:
    """A LoRA to train: ``skill=None`` is the safety adapter, else a skill's training split.

    The safety adapter learns ``n_train`` AdvBench training goals → natural refusals and, as
    retain data, ``n_retain`` everyday questions → their helpful answers (``benign-helpful``).
    """

    name: str
    skill: str | None
    n_train: int
    training: LoRATrainingConfig
    n_retain: int = 0


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
    """One method's curve: ``merge_method`` with ``knob`` taking each of ``values``.

    ``knob`` is a shared mergekit parameter, or ``safety_weight`` (the safety input's
    ``weight``), or ``density`` (every input's density). ``fisher_kind`` names the Fisher pair
    the method needs (``None``: none) and ``fisher_at`` the weights it is collected at
    (:class:`FisherPoint`: ``base`` = W0, or ``utility_merge`` = W0 + U, the task-arithmetic
    merge of the utility adapters, where the safety patch is added); ``utilities_only`` drops
    the safety input; ``utility_weight`` is every utility input's weight (task arithmetic's λ).
    """

    label: str
    merge_method: str
    knob: str | None
    values: tuple[Any, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    fisher_kind: str | None = None
    per_model_fisher: bool = False
    utilities_only: bool = False
    fisher_at: str = "base"
    utility_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        object.__setattr__(
            self, "fisher_at", FisherPoint.parse(f"sweep {self.label}: fisher_at", self.fisher_at)
        )
        if self.fisher_at == "utility_merge" and self.utility_weight != 1.0:
            raise SSTError(
                f"sweep {self.label}: fisher_at 'utility_merge' is the merge at utility weight "
                f"1; it cannot be combined with utility_weight {self.utility_weight}"
            )
        if self.knob is None and len(self.values) != 1:
            raise SSTError(f"sweep {self.label}: without a knob give exactly one value (None)")


@dataclass(frozen=True)
class Profile:
    """Everything one benchmark run does (module doc)."""

    name: str
    adapters: tuple[AdapterSpec, ...]
    fisher: FisherSettings
    evaluation: EvalConfig
    sweeps: tuple[Sweep, ...]
    single_adapters: bool = True

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
    scales: tuple[float, ...],
    fisher_at: str = "base",
) -> Sweep:
    """SST-Merge (task-arithmetic utility merge) with ``select`` at ``setting`` (the mode's own
    parameter, e.g. ``ratio`` τ or ``soft`` ρ), sweeping the patch scale ``s``; Fisher pair of
    ``kind`` at ``fisher_at``."""
    parameter = get_select_mode(select).parameter
    return Sweep(
        label,
        "sst_merge",
        "scale",
        scales,
        {"select": select, parameter: setting, "utility_merge": "task_arithmetic"},
        fisher_kind=kind,
        fisher_at=fisher_at,
    )


#: the utility-only merge: task arithmetic of the utility adapters (``W0 + U``)
UTILITY_ONLY = Sweep("utility_only", "task_arithmetic", None, (None,), utilities_only=True)


def _baselines(weights: tuple[float, ...]) -> list[Sweep]:
    """The host baselines with the safety LoRA as an ordinary input of weight ``weights``
    (TIES / DARE at density 0.5 for every input)."""
    return [
        UTILITY_ONLY,
        Sweep("task_arithmetic", "task_arithmetic", "safety_weight", weights),
        Sweep("ties", "ties", "safety_weight", weights, {"normalize": False, "density": 0.5}),
        Sweep(
            "dare_ties", "dare_ties", "safety_weight", weights, {"normalize": False, "density": 0.5}
        ),
        # RESTA: DARE on the utility deltas (density 0.5), the safety vector added unsparsified
        Sweep("resta", "dare_linear", "safety_weight", weights, {"normalize": False}),
    ]


#: the safety adapter: AdvBench training goals → natural refusals, plus everyday questions →
#: helpful answers as retain data (without them the adapter refuses everything, benign included)
_TRAIN_SAFETY = LoRATrainingConfig(steps=80, learning_rate=2e-3)
_TRAIN_SKILL = LoRATrainingConfig(steps=60, learning_rate=2e-3)
#: the safety strengths every method sweeps (a merged safety LoRA needs more than weight 1 to
#: keep refusing next to the skill LoRAs: see benchmarks/safety_utility/README.md)
_WEIGHTS = (1.5, 2.0, 3.0)

FULL = Profile(
    name="full",
    adapters=(
        AdapterSpec(SAFETY, None, 390, _TRAIN_SAFETY, n_retain=150),
        AdapterSpec("reverse_letters", "reverse_letters", 400, _TRAIN_SKILL),
        AdapterSpec("uppercase", "uppercase", 400, _TRAIN_SKILL),
    ),
    fisher=FisherSettings(
        kinds=("lora", "kfac", "diag"),
        n_harm=64,
        n_benign_helpful=64,
        n_benign_edgy=48,
        n_benign_per_skill=16,
    ),
    evaluation=EvalConfig(
        harmful="harmbench",
        benign="benign-edgy",
        utility=("reverse_letters", "uppercase"),
        truefalse="truefalse",
        n_harmful=32,
        n_benign=32,
        n_utility=16,
        n_truefalse=60,
        max_new_tokens=32,
    ),
    sweeps=(
        *_baselines(_WEIGHTS),
        Sweep(
            "fisher_merge",
            "sst_fisher_merge",
            "safety_weight",
            _WEIGHTS[1:],
            per_model_fisher=True,
        ),
        Sweep(
            "safe_lora",
            "sst_safe_lora",
            "scale",
            _WEIGHTS[1:],
            {"gate": "project", "threshold": 0.5},
        ),
        Sweep(
            "safemerge", "sst_safe_lora", "scale", _WEIGHTS[1:], {"gate": "merge", "threshold": 0.5}
        ),
        Sweep(
            "single_fisher",
            "sst_single_fisher",
            "scale",
            _WEIGHTS[1:],
            {"select": "energy", "energy": 0.9},
            fisher_kind="lora",
        ),
        _sst("sst_lora_hard", "lora", "ratio", 1.0, (1.5, 2.0, 3.0)),
        _sst("sst_lora_soft", "lora", "soft", 1.0, (2.0, 3.0, 4.0)),
        _sst("sst_kfac_hard", "kfac", "ratio", 1.0, (1.5, 2.0, 3.0)),
        _sst("sst_kfac_soft", "kfac", "soft", 1.0, (2.0, 3.0, 4.0)),
        _sst("sst_diag_hard", "diag", "ratio", 1.0, (1.5, 2.0, 3.0)),
        _sst("sst_diag_soft", "diag", "soft", 1.0, (2.0, 3.0, 4.0)),
        # the Fisher pair at W0 + U, where the patch is added, instead of at the base model
        _sst("sst_lora_hard_at_merge", "lora", "ratio", 1.0, (1.5, 2.0, 3.0), "utility_merge"),
        _sst("sst_lora_soft_at_merge", "lora", "soft", 1.0, (2.0, 3.0, 4.0), "utility_merge"),
        # every utility adapter at λ = 0.5 instead of 1: less interference with the safety patch
        replace(UTILITY_ONLY, label="utility_only_lambda0.5", utility_weight=0.5),
        Sweep(
            "task_arithmetic_lambda0.5",
            "task_arithmetic",
            "safety_weight",
            (0.75, 0.875, 1.0, 1.5),
            utility_weight=0.5,
        ),
        replace(
            _sst("sst_lora_soft_lambda0.5", "lora", "soft", 1.0, (1.0, 1.25, 1.5, 2.0)),
            utility_weight=0.5,
        ),
    ),
)

QUICK = Profile(
    name="quick",
    adapters=(
        AdapterSpec(SAFETY, None, 390, replace(_TRAIN_SAFETY, steps=45), n_retain=150),
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
    evaluation=replace(FULL.evaluation, n_harmful=24, n_benign=24, n_truefalse=40),
    sweeps=(
        *_baselines((2.0,))[:2],
        _sst("sst_lora_hard", "lora", "ratio", 1.0, (2.0,)),
        _sst("sst_lora_soft", "lora", "soft", 1.0, (3.0,)),
    ),
    single_adapters=False,
)

PROFILES: Mapping[str, Profile] = MappingProxyType({"quick": QUICK, "full": FULL})
