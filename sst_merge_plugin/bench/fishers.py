"""The Fisher stage: every Fisher file a profile's sweeps need, collected once by content.

Each file is a :class:`~sst_merge_plugin.fisher.request.FisherRequest` handed to the
content-keyed cache (:func:`~sst_merge_plugin.fisher.cache.cached_fisher_file`, folder
``fishers/``), i.e. exactly what ``sst-merge fisher`` would write:

* :meth:`Fishers.pair` — ``(F_harm, F_benign)`` of a kind: objective ``refusal`` on the harm
  prompt file (seeded template targets, or the model's own refusals given with each prompt,
  option ``target_field``, when the profile self-distils them: :mod:`.refusals`) and the
  profile's benign objective (``kl``) on the benign prompt file; a
  restricted kind (``lora``) is restricted to the safety adapter. Collected at the base model
  or at another collection point (``Sweep.fisher_at``, e.g. the utility merge ``W0 + U``)
  resolved by the ``model_at`` callable the pipeline passes in.
* :meth:`Fishers.adapter_fisher` — a Fisher of base + adapter on the adapter's own training
  data (objective ``lm``): the ``diag`` one of Fisher merging, and the dual projection's gain
  Fisher ``G_i`` of each skill adapter (any kind; a restricted kind on the joint span of every
  adapter of the profile).
* :meth:`Fishers.cost` — the dual projection's cost Fisher ``C`` at the safe model
  ``W0 + ΔW_s``: objective ``kl`` on the harmful training prompts and the over-refusal training
  probes (the model's own refusals and answers), or ``refusal`` on the harmful prompts alone
  (their targets as for ``F_harm``).

The dual's two take a collection point (:class:`~.profile.DualFisherPoint`): ``own`` (the
points above) or ``base`` (no adapter loaded: the same data and objective at ``W0``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sst_merge_plugin.bench.adapters import Adapters
from sst_merge_plugin.bench.profile import AdapterSpec, DualFisherPoint, FisherSettings
from sst_merge_plugin.bench.prompts import PromptFiles
from sst_merge_plugin.bench.workspace import Workspace
from sst_merge_plugin.core.kinds import get_kind
from sst_merge_plugin.fisher import Objective

if TYPE_CHECKING:
    from sst_merge_plugin.bench.refusals import OwnRefusals


class Fishers:
    """The cached Fisher files of a profile (module doc).

    ``model_at(point)`` is the model folder of a collection point (``"base"`` or
    ``"utility_merge"``); ``refusals`` (the model's own refusals, :mod:`.refusals`) replaces
    the seeded template targets of the ``refusal`` objective.
    """

    def __init__(
        self,
        workspace: Workspace,
        settings: FisherSettings,
        adapters: Adapters,
        prompt_files: PromptFiles,
        model_at: Callable[[str], Path],
        *,
        device: str,
        refusals: OwnRefusals | None = None,
        progress: bool = True,
    ) -> None:
        self.refusals = refusals
        self.progress = progress
        self.workspace = workspace
        self.settings = settings
        self.adapters = adapters
        self.prompt_files = prompt_files
        self.model_at = model_at
        self.device = device
        #: (kind, collection point) → (harm, benign) files collected by this run
        self.pairs: dict[tuple[str, str], tuple[Path, Path]] = {}
        #: (adapter name, kind, point) → that adapter's own ``lm`` Fisher collected by this run
        self.adapter_fishers: dict[tuple[str, str, str], Path] = {}
        #: (kind, objective, point) → the dual's cost Fisher collected by this run
        self.costs: dict[tuple[str, str, str], Path] = {}

    def _restriction(self, kind: str, joint: bool) -> dict[str, Any]:
        """``restrict_to`` for a restricted kind: the safety adapter, or (``joint``) every
        adapter of the profile, whose joint span holds every delta."""
        if not get_kind(kind).restricted:
            return {}
        specs = self.adapters.profile.adapters if joint else (self.adapters.safety,)
        return {"restrict_to": [str(self.adapters.folder(spec)) for spec in specs]}

    def _file(
        self,
        label: str,
        data: Path,
        objective: Objective,
        kind: str,
        model_dir: Path,
        options: Mapping[str, Any],
        **sources: Any,
    ) -> Path:
        from sst_merge_plugin.fisher.cache import cached_fisher_file
        from sst_merge_plugin.fisher.request import FisherRequest

        settings = self.settings
        every = {
            "batch_size": settings.batch_size,
            "max_length": settings.max_length,
            "seed": settings.seed,
            "device": self.device,
            **options,
        }
        request = FisherRequest.from_options(
            str(model_dir), str(data), objective, kind, options=every, **sources
        )
        return cached_fisher_file(
            request, self.workspace / "fishers", label, progress=self.progress
        )

    def refusal_data(self) -> tuple[Path, dict[str, Any]]:
        """The ``refusal`` objective's data file and its options: the harm prompt file
        (seeded template targets), or the harm prompts with the model's own refusals as
        targets (``target_field: refusal``)."""
        options: dict[str, Any] = {"split": "all", "field": "prompt"}
        if self.refusals is None:
            return self.prompt_files.harmful(), options
        targets = self.refusals.targets(self.prompt_files.harmful_prompts())
        data = self.prompt_files.harmful_with_targets(targets)
        return data, {**options, "target_field": "refusal"}

    def pair(self, kind: str, at: str = "base") -> tuple[Path, Path]:
        """``(harm_fisher, benign_fisher)`` files of ``kind`` collected at ``at``."""
        if (kind, at) not in self.pairs:
            model_dir = self.model_at(at)
            sources = self._restriction(kind, joint=False)
            prompts = {"split": "all", "field": "prompt"}
            harm_data, harm_options = self.refusal_data()
            harm = self._file(
                "harm", harm_data, Objective.REFUSAL, kind, model_dir, harm_options, **sources,
            )  # fmt: skip
            benign = self._file(
                "benign", self.prompt_files.benign(), self.settings.benign_objective, kind,
                model_dir, {**prompts, "response_tokens": self.settings.response_tokens},
                **sources,
            )  # fmt: skip
            self.pairs[(kind, at)] = (harm, benign)
        return self.pairs[(kind, at)]

    def _adapter_at(self, spec: AdapterSpec, at: str) -> dict[str, str]:
        """The ``adapter`` source of a dual Fisher collected at ``at``: ``spec``'s folder
        (``own``) or none (``base``)."""
        at = DualFisherPoint.parse("dual Fisher collection point", at)
        return {"adapter": str(self.adapters.folder(spec))} if at == DualFisherPoint.OWN else {}

    def adapter_fisher(
        self, spec: AdapterSpec, kind: str = "diag", at: str = DualFisherPoint.OWN
    ) -> Path:
        """A ``kind`` Fisher on the adapter's own training data (``lm``), of base + adapter
        (``at="own"``) or of the base model (``"base"``)."""
        if (spec.name, kind, at) not in self.adapter_fishers:
            pairs = self.adapters.pairs(spec)[: self.settings.n_benign_per_skill * 2]
            records = [{"prompt": p, "response": r} for p, r in pairs]
            data = self.workspace.prompt_file(spec.name, records)
            self.adapter_fishers[(spec.name, kind, at)] = self._file(
                spec.name, data, Objective.LM, kind, self.model_at("base"), {"split": "all"},
                **self._adapter_at(spec, at), **self._restriction(kind, joint=True),
            )  # fmt: skip
        return self.adapter_fishers[(spec.name, kind, at)]

    def cost(self, kind: str, objective: str, at: str = DualFisherPoint.OWN) -> Path:
        """The dual projection's cost Fisher ``C`` of ``kind`` (module doc), objective ``kl``
        or ``refusal``, at the safe model (``at="own"``) or the base model (``"base"``)."""
        objective = Objective.parse("cost objective", objective)
        if (kind, objective, at) not in self.costs:
            if objective == Objective.KL:
                data = self.prompt_files.safety_behaviour()
                options = {
                    "split": "all",
                    "field": "prompt",
                    "response_tokens": self.settings.response_tokens,
                }
            else:
                data, options = self.refusal_data()
            self.costs[(kind, objective, at)] = self._file(
                "cost", data, objective, kind, self.model_at("base"), options,
                **self._adapter_at(self.adapters.safety, at), **self._restriction(kind, joint=True),
            )  # fmt: skip
        return self.costs[(kind, objective, at)]
