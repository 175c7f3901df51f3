"""One Fisher collection, described and checked: :class:`FisherRequest`.

A request names the model folder, the data, the objective and the kind, plus the collection
options (:data:`OPTIONS`). ``sst-merge fisher`` builds one from its command line, a FusionBench
``fisher_collection`` and the benchmark pipeline build theirs from mappings
(:meth:`FisherRequest.from_options`); all of them hand it to
:func:`sst_merge_plugin.fisher.collect.collect_fisher_file` (or its content-keyed cache,
:mod:`.cache`). Construction checks every value that can be checked without reading a file, so a
bad option fails before anything is loaded.

Data selection (:meth:`FisherRequest.select_data`): ``split`` takes the project-wide held-out
split of the prompts (:func:`sst_merge_plugin.data.prompts.held_out_split`, the split the
evaluation holds out): ``train`` (the default) keeps the part the evaluation does not use,
``eval`` the held-out part, ``all`` everything. ``max_examples = N`` then keeps the ``N`` items
with the smallest ``sha256(f"fisher/{seed}\\0{text}")``, in data order (a seeded,
position-independent subset).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sst_merge_plugin.choice import Choice
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.kinds import get_kind
from sst_merge_plugin.fisher import Objective


class Split(Choice):
    """Which part of a prompt set a Fisher is collected on (module doc)."""

    TRAIN = "train"
    EVAL = "eval"
    ALL = "all"


class Device(Choice):
    """Where the collection runs."""

    CPU = "cpu"
    CUDA = "cuda"


#: the fields that say *what* is collected; every other field is an option (:data:`OPTIONS`)
IDENTITY = ("model", "data", "objective", "kind", "adapter", "restrict_to")
#: options that must be at least a minimum (``max_examples`` may also be ``None``)
MINIMUMS = {"batch_size": 1, "max_length": 2, "response_tokens": 1, "max_examples": 1}


@dataclass(frozen=True)
class FisherRequest:
    """Everything one Fisher collection needs (the ``sst-merge fisher`` options, same names
    with ``_`` for ``-``).

    ``model`` — the BASE model's Hugging Face folder (its fingerprint goes into the file);
    ``data`` — a registered prompt set or a prompt file (for objective ``lm`` a file of
    prompt/response records); ``adapter`` — a PEFT LoRA folder applied before collecting;
    ``restrict_to`` — the adapter(s) whose subspaces restrict a restricted kind (``lora``;
    several adapters: their joint span, :func:`~sst_merge_plugin.fisher.adapter.
    adapter_subspaces`);
    ``field`` / ``response_field`` — the record fields; ``target_field`` — objective
    ``refusal`` only: each prompt's refusal target is that field of its record (e.g. the model's
    own refusals, ``docs/design.md`` §2.4) instead of a seeded template (``None``, the default);
    ``targets`` — Linear layers (names or a
    regex; default every Linear inside the decoder blocks); ``max_examples``, ``batch_size``,
    ``max_length`` (tokens per example), ``response_tokens`` (``kl``: tokens sampled per
    prompt), ``seed`` (refusal targets, kl sampling, subset), ``device``, ``split``.
    """

    model: str
    data: str
    objective: Objective
    kind: str
    adapter: str | None = None
    restrict_to: tuple[str, ...] = ()
    field: str | None = None
    response_field: str = "response"
    target_field: str | None = None
    targets: str | None = None
    max_examples: int | None = None
    batch_size: int = 8
    max_length: int = 512
    response_tokens: int = 64
    seed: int = 0
    device: Device = Device.CPU
    split: Split = Split.TRAIN

    def __post_init__(self) -> None:
        restrict = self.restrict_to
        restrict = (restrict,) if isinstance(restrict, str | os.PathLike) else tuple(restrict or ())
        object.__setattr__(self, "restrict_to", tuple(str(path) for path in restrict))
        object.__setattr__(self, "objective", Objective.parse("objective", self.objective))
        object.__setattr__(self, "split", Split.parse("split", self.split))
        object.__setattr__(self, "device", Device.parse("device", self.device))
        kind = get_kind(self.kind)
        for name in (*MINIMUMS, "seed"):
            value = getattr(self, name)
            if value is None and name == "max_examples":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise SSTError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
            if name in MINIMUMS and value < MINIMUMS[name]:
                raise SSTError(
                    f"--{name.replace('_', '-')} must be >= {MINIMUMS[name]}, got {value}"
                )
        if kind.restricted and not self.restrict_to:
            raise SSTError(
                f"--kind {kind.name} needs --restrict-to ADAPTER (the subspace to restrict to)"
            )
        if self.restrict_to and not kind.restricted:
            restricted = [name for name in _restricted_kinds()]
            raise SSTError(f"--restrict-to only applies to --kind {' or '.join(restricted)}")
        if self.objective != Objective.LM and self.response_field != "response":
            raise SSTError("--response-field only applies to --objective lm")
        if self.target_field is not None and self.objective != Objective.REFUSAL:
            raise SSTError("--target-field only applies to --objective refusal")

    @classmethod
    def from_options(
        cls,
        model: str,
        data: str,
        objective: str,
        kind: str,
        *,
        adapter: str | None = None,
        restrict_to: tuple[str, ...] = (),
        options: Mapping[str, Any] | None = None,
    ) -> FisherRequest:
        """A request with ``options`` (keys of :data:`OPTIONS`; ``None`` values take the
        defaults). An unknown key is an :class:`SSTError` naming the allowed ones."""
        given = {key: value for key, value in (options or {}).items() if value is not None}
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            hints = [difflib.get_close_matches(key, OPTIONS, n=1) for key in unknown]
            hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
            raise SSTError(
                f"fisher_collection: unknown option(s) {unknown}{hint}; allowed: "
                f"{', '.join(OPTIONS)}"
            )
        return cls(model, data, objective, kind, adapter, restrict_to, **given)  # type: ignore[arg-type]

    def options(self) -> dict[str, Any]:
        """The option values (:data:`OPTIONS`) of this request."""
        return {name: getattr(self, name) for name in OPTIONS}

    def select_data(self) -> tuple[dict[str, list], dict[str, str]]:
        """The ``prompts=`` or ``completions=`` argument of
        :func:`~sst_merge_plugin.fisher.objectives.prepare_data` after ``split`` and
        ``max_examples`` (module doc), and the metadata that describes the selection."""
        from sst_merge_plugin.data.prompts import load_prompts, seeded_subset

        items: list
        paired = self.objective == Objective.LM or self.target_field is not None
        if paired:
            from sst_merge_plugin.fisher.objectives import load_completions

            response_field = self.target_field or self.response_field
            items = load_completions(self.data, self.field or "prompt", response_field)
            prompts, name = [prompt for prompt, _ in items], Path(self.data).name
            texts = [f"{prompt}\0{response}" for prompt, response in items]
        else:
            prompt_set = load_prompts(self.data, field=self.field)
            items = prompts = list(prompt_set.prompts)
            name, texts = prompt_set.name, prompts
        if self.split != Split.ALL:
            part = _split_part(prompts, self.split)
            kept = [index for index, prompt in enumerate(prompts) if prompt in part]
            items, texts = [items[i] for i in kept], [texts[i] for i in kept]
        items = seeded_subset(items, texts, self.max_examples, f"fisher/{self.seed}")
        if not items:
            raise SSTError(f"no examples left in {self.data!r} after --split {self.split}")
        info = {"dataset": str(self.data), "dataset_name": name, "split": str(self.split)}
        if self.max_examples is not None:
            info["max_examples"] = str(self.max_examples)
        if self.target_field is not None:
            info["refusal_targets"] = f"field {self.target_field!r} of the data"
        return {"completions" if paired else "prompts": items}, info


#: the collection options: every field of :class:`FisherRequest` but :data:`IDENTITY`
OPTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(FisherRequest) if f.name not in IDENTITY
)
#: each option's default value
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(FisherRequest) if f.name in OPTIONS
}


def _restricted_kinds() -> list[str]:
    from sst_merge_plugin.core.kinds import kind_names

    return [name for name in kind_names() if get_kind(name).restricted]


def _split_part(prompts: Sequence[str], split: Split) -> set[str]:
    from sst_merge_plugin.data.prompts import held_out_split

    train, evaluation = held_out_split(list(prompts))
    return set(train.prompts if split == Split.TRAIN else evaluation.prompts)
