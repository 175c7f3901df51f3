"""The safety–utility evaluation of one model: harmful refusal, benign over-refusal, utility skills,
true/false statement accuracy.

Data selection (all deterministic given :attr:`EvalConfig.seed`, done by :func:`prepare_eval_data`
without loading any model, so bad names and files fail before anything heavy happens):

* Prompt sets (``harmful``, ``benign``) are registered names or files
  (:func:`sst_merge_plugin.data.prompts.load_prompts`). Registered sets that are also used for
  training (:data:`~sst_merge_plugin.data.prompts.HELD_OUT_SETS`: AdvBench trains safety adapters
  and Fishers, the benign-edgy probes may build the benign Fisher) are evaluated only on their
  held-out part ``held_out_split(set)[1]`` (:func:`sst_merge_plugin.data.prompts.held_out_split`);
  training takes ``[0]`` of the same call. HarmBench and user files are used whole (HarmBench is
  eval-only).
* From each pool, ``n`` items are the ``n`` with the smallest ``sha256(f"eval/{seed}\\0{text}")``
  (all of them when the pool is smaller; the ``n_*`` result keys give the counts used), kept in
  pool order.
* Utility: a skill name uses that skill's ``skill_pool`` (``test`` or ``validation``, disjoint
  problem pools, :func:`sst_merge_plugin.data.tasks.draw_items`), a ``.jsonl`` file
  (``prompt``/``answer`` fields) is subsampled as above; the result key is the skill name or the
  file's stem.
* ``truefalse``: a statement-pair set name or JSON file
  (:func:`sst_merge_plugin.data.prompts.load_statement_pairs`), subsampled as above.
* ``mmlu``: that many questions of the fixed MMLU subset (:func:`sst_merge_plugin.data.mmlu.
  mmlu_subset`), scored by the next-token distribution over the answer letters; 0 skips it.

The benchmark protocol evaluates on disjoint splits: ``harmbench-val`` / ``overrefusal-val`` /
``skill_pool="validation"`` to choose settings, ``harmbench-test`` / ``overrefusal-test`` /
``skill_pool="test"`` to report (``docs/design.md`` §7).

:func:`evaluate_model` returns a JSON-serialisable dict (keys in its docstring).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.prompts import (
    HELD_OUT_SETS,
    held_out_split,
    load_prompts,
    load_statement_pairs,
    prompts_sha256,
    seeded_subset,
)
from sst_merge_plugin.data.tasks import SKILLS, Pool, TaskItem, draw_items, load_task_file
from sst_merge_plugin.evaluation.metrics import (
    mmlu_accuracy,
    refusal_rate,
    statement_pair_accuracy,
    utility_exact_match,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

T = TypeVar("T")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (selection rules in the module docstring).

    ``harmful``/``benign``: registered prompt-set name or prompt file (``*_field`` picks the
    column of JSON/JSONL/CSV files); ``utility``: skill names and/or JSONL task files;
    ``truefalse``: statement-pair set name or JSON file, or ``None`` to skip. ``n_*`` are the
    number of items per set (per skill/file for utility). ``skill_pool``: the skills' problem
    pool (``test`` or ``validation``); ``mmlu``: number of MMLU questions (0: skip). Generation
    is greedy with ``max_new_tokens`` in batches of ``batch_size``.
    """

    harmful: str = "harmbench"
    benign: str = "benign-edgy"
    utility: tuple[str, ...] = ()
    truefalse: str | None = None
    n_harmful: int = 32
    n_benign: int = 32
    n_utility: int = 20
    n_truefalse: int = 100
    max_new_tokens: int = 48
    batch_size: int = 8
    seed: int = 0
    harmful_field: str | None = None
    benign_field: str | None = None
    skill_pool: str = "test"
    mmlu: int = 0

    def __post_init__(self) -> None:
        Pool.parse("skill_pool", self.skill_pool)
        if self.skill_pool == Pool.TRAIN:
            raise SSTError("EvalConfig.skill_pool must be test or validation, not train")
        if self.mmlu < 0:
            raise SSTError(f"EvalConfig.mmlu must be >= 0, got {self.mmlu}")
        for name in ("n_harmful", "n_benign", "n_utility", "n_truefalse"):
            if getattr(self, name) < 1:
                raise SSTError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens < 1:
            raise SSTError(f"EvalConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise SSTError(f"EvalConfig.batch_size must be >= 1, got {self.batch_size}")
        if isinstance(self.utility, str):
            raise SSTError("EvalConfig.utility must be a sequence of skill names/files, not a str")


@dataclass(frozen=True)
class PromptSelection:
    """The prompts chosen from one set, where they came from, and their sha256."""

    source: str
    prompts: tuple[str, ...]

    def describe(self) -> dict[str, str | int]:
        """``{"source", "n", "sha256"}`` for the result's ``data`` record."""
        return {
            "source": self.source,
            "n": len(self.prompts),
            "sha256": prompts_sha256(self.prompts),
        }


@dataclass(frozen=True)
class EvalData:
    """Everything :func:`evaluate_model` feeds the model, selected by :func:`prepare_eval_data`."""

    harmful: PromptSelection
    benign: PromptSelection
    utility: dict[str, tuple[TaskItem, ...]] = field(default_factory=dict)
    truefalse: tuple[tuple[str, str], ...] = ()
    mmlu: tuple = ()


def select_subset(items: Sequence[T], keys: Sequence[str], n: int, seed: int) -> list[T]:
    """The ``n`` items whose ``sha256(f"eval/{seed}\\0{key}")`` is smallest, in input order
    (:func:`~sst_merge_plugin.data.prompts.seeded_subset` with salt ``eval/{seed}``)."""
    return seeded_subset(items, keys, n, f"eval/{seed}")


def _select_prompts(source: str, field_name: str | None, n: int, seed: int) -> PromptSelection:
    prompt_set = load_prompts(source, field=field_name)
    if source in HELD_OUT_SETS:
        _, prompt_set = held_out_split(prompt_set)
    prompts = select_subset(prompt_set.prompts, prompt_set.prompts, n, seed)
    return PromptSelection(prompt_set.name, tuple(prompts))


def _utility_items(spec: str, n: int, seed: int, pool: str) -> tuple[str, tuple[TaskItem, ...]]:
    if spec in SKILLS:
        chosen = Pool(pool)
        return spec, tuple(draw_items(spec, {chosen: n}, seed)[chosen])
    path = Path(spec)
    if path.suffix.lower() != ".jsonl":
        raise SSTError(
            f"utility {spec!r} is neither a skill ({', '.join(SKILLS)}) nor a .jsonl task file"
        )
    items = load_task_file(path)
    return path.stem, tuple(select_subset(items, [item.prompt for item in items], n, seed))


def prepare_eval_data(config: EvalConfig) -> EvalData:
    """Load and select all evaluation data for ``config``; :class:`SSTError` on any bad name,
    file or field (see the module docstring for the selection rules)."""
    harmful = _select_prompts(config.harmful, config.harmful_field, config.n_harmful, config.seed)
    benign = _select_prompts(config.benign, config.benign_field, config.n_benign, config.seed)
    utility: dict[str, tuple[TaskItem, ...]] = {}
    for spec in config.utility:
        name, items = _utility_items(spec, config.n_utility, config.seed, config.skill_pool)
        if name in utility:
            raise SSTError(f"two utility entries are both named {name!r}; rename one of the files")
        utility[name] = items
    truefalse: tuple[tuple[str, str], ...] = ()
    if config.truefalse is not None:
        pairs = load_statement_pairs(config.truefalse)
        keys = [f"{true}\0{false}" for true, false in pairs]
        truefalse = tuple(select_subset(pairs, keys, config.n_truefalse, config.seed))
    mmlu: tuple = ()
    if config.mmlu:
        from sst_merge_plugin.data.mmlu import mmlu_subset

        mmlu = tuple(mmlu_subset(config.mmlu, config.seed))
    return EvalData(harmful, benign, utility, truefalse, mmlu)


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: EvalConfig,
    progress: bool = True,
    data: EvalData | None = None,
) -> dict:
    """Evaluate ``model`` on ``config``'s data (``data`` from :func:`prepare_eval_data`, loaded
    here when omitted). Returns a JSON-serialisable dict:

    ``harmful_refusal``/``benign_over_refusal`` (judge refusal rates), ``utility``
    ({name: exact-match accuracy}), ``utility_mean`` (unweighted mean over names, ``None``
    without utility), ``truefalse_accuracy`` (``None`` when skipped), ``n_harmful``,
    ``n_benign``, ``n_utility`` ({name: n}), ``n_truefalse``, ``harmful_rules``/``benign_rules``
    (judge rule counts), ``truefalse_margin`` (mean per-token LL margin), ``examples``,
    ``data`` (sources and sha256 of the prompts used), ``config``, ``seconds`` (total) and
    ``seconds_by_part``; ``mmlu_accuracy``, ``mmlu_logprob`` and ``n_mmlu`` (``None``/0 when
    skipped); ``items`` — every item's outcome in data order, for paired comparisons:
    ``{"harmful": [{"response", "refused"}], "benign": [...], "utility": {name: [bool]},
    "mmlu": [bool]}``.
    """
    data = data if data is not None else prepare_eval_data(config)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    generation = {
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size,
        "progress": progress,
    }

    @contextmanager
    def timed(part: str) -> Iterator[None]:
        begin = time.perf_counter()
        yield
        timings[part] = round(time.perf_counter() - begin, 3)

    with timed("harmful"):
        harmful = refusal_rate(model, tokenizer, data.harmful.prompts, desc="harmful", **generation)
    with timed("benign"):
        benign = refusal_rate(model, tokenizer, data.benign.prompts, desc="benign", **generation)
    utility = {}
    for name, items in data.utility.items():
        with timed(f"utility:{name}"):
            utility[name] = utility_exact_match(model, tokenizer, items, desc=name, **generation)
    truefalse = None
    if data.truefalse:
        with timed("truefalse"):
            truefalse = statement_pair_accuracy(
                model, tokenizer, data.truefalse, batch_size=config.batch_size, progress=progress
            )
    mmlu = None
    if data.mmlu:
        with timed("mmlu"):
            mmlu = mmlu_accuracy(
                model, tokenizer, data.mmlu, batch_size=config.batch_size, progress=progress
            )
    accuracies = {name: result.accuracy for name, result in utility.items()}
    return {
        "harmful_refusal": harmful.rate,
        "benign_over_refusal": benign.rate,
        "utility": accuracies,
        "utility_mean": sum(accuracies.values()) / len(accuracies) if accuracies else None,
        "truefalse_accuracy": truefalse.accuracy if truefalse else None,
        "truefalse_margin": truefalse.mean_margin if truefalse else None,
        "n_harmful": harmful.n,
        "n_benign": benign.n,
        "n_utility": {name: result.n for name, result in utility.items()},
        "n_truefalse": truefalse.n if truefalse else 0,
        "harmful_rules": harmful.rule_counts,
        "benign_rules": benign.rule_counts,
        "examples": {
            "harmful": harmful.examples,
            "benign": benign.examples,
            "utility": {name: result.examples for name, result in utility.items()},
        },
        "data": {
            "harmful": data.harmful.describe(),
            "benign": data.benign.describe(),
        },
        "mmlu_accuracy": mmlu.accuracy if mmlu else None,
        "mmlu_logprob": mmlu.mean_logprob if mmlu else None,
        "n_mmlu": mmlu.n if mmlu else 0,
        "items": {
            "harmful": _refusal_items(harmful),
            "benign": _refusal_items(benign),
            "utility": {name: result.correct for name, result in utility.items()},
            "mmlu": mmlu.correct if mmlu else [],
        },
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_by_part": timings,
    }


def _refusal_items(result) -> list[dict[str, object]]:
    return [
        {"response": response, "refused": refused}
        for response, refused in zip(result.responses, result.verdicts, strict=True)
    ]
