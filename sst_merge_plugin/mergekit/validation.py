"""Up-front validation of a planned SST merge — everything checked before mergekit writes.

mergekit creates the output directory when its ``TensorWriterTask`` first runs, i.e. after
planning; the planner hook (:mod:`.registration`) calls :func:`check_config_keys
<sst_merge_plugin.mergekit.config_keys.check_config_keys>` on the raw configuration and then
:func:`validate_planned_merge` on the planned per-tensor tasks, so a bad configuration fails
with a specific :class:`~sst_merge_plugin.core.SSTError` and no output directory.

Checked up front, for every planned tensor (parameters as mergekit resolved them for it):

* parameter values (``select``/``k``/…, ``utility_merge``, ``missing_fisher``, …) and exactly
  one ``role: safety`` input;
* every Fisher file named: exists, is a readable ``sst-fisher/1`` safetensors file with a
  complete key layout (:class:`~sst_merge_plugin.fisher.file.FisherFile`); the two shared
  files have one kind and, when both record one, one ``model_fingerprint``; per-input files of
  ``sst_fisher_merge`` are ``diag``; ``write_adapter`` needs lora-kind Fishers;
* each file's ``model_fingerprint`` (when recorded) against the base model folder
  (:func:`~sst_merge_plugin.method.checks.fingerprint_outcome`; for ``sst_fisher_merge``
  files: the base's or that input's folder; for a ``base+lora`` reference the folder of its
  base) when that is a local folder, unless ``check_fingerprint: false``;
* the Fisher weight shape of every 2-D tensor with entries against the tensor's shape (read
  from the base checkpoint's safetensors header; skipped for ``.bin`` checkpoints);
* a file that has entries for none of the merge's tensors (a naming mismatch);
* the sanity of the settings and the Fisher pair
  (:func:`~sst_merge_plugin.method.checks.sanity_findings`: one file as both Fishers, the pair
  swapped, a negative safety factor are errors; a zero safety factor and unexpected objectives
  are :class:`~sst_merge_plugin.method.checks.SSTCheckWarning` s);
* ``missing_fisher: error``: 2-D tensors without entries in a file whose projected delta
  (the safety delta for ``harm_fisher``/``benign_fisher``, any utility delta for
  ``cost_fisher``, that input's for a ``gain_fisher``; for ``sst_fisher_merge`` any input's
  delta) is non-zero — this reads those tensors (only those) from the base and the inputs.

* every entry of every 2-D tensor the merge uses: shapes that fit together and finite values
  (:func:`~sst_merge_plugin.method.checks.fisher_entry_problems`, one read through
  ``safe_open``);
* the recorded adapter digests (a lora-kind file's restriction; the adapter applied while
  collecting an input's own ``gain_fisher``) against the ``base+lora`` adapter of each input
  whose delta the file projects, then for restricted (lora-kind) Fishers the part of each
  projected delta (the safety patch; with ``project: utility | both`` each utility delta)
  outside the Fisher's subspace for a sample of tensors (:func:`_patch_problems`).

Checked only per tensor, during the merge: the rest of the factor *values* (symmetric, PSD,
orthonormal ``U``/``V``, identical lora subspaces of the two files). A failure there aborts
the merge; the ``run_merge`` hook merges into a temporary sibling folder, so the output folder
is then left as it was (absent, or the previous merge's).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import torch
from safetensors import safe_open

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.fisher.file import FisherFile
from sst_merge_plugin.method.checks import (
    SUBSPACE_HINT,
    Finding,
    adapter_problem,
    cannot_run,
    fingerprint_outcome,
    fisher_entry_problems,
    sanity_findings,
    subspace_problem,
    warn_findings,
)
from sst_merge_plugin.method.fisher_sources import FisherSources, describe_fisher
from sst_merge_plugin.method.session import MergeSession
from sst_merge_plugin.method.settings import (
    FINGERPRINT_NOT_CHECKED,
    PROJECTING,
    AdapterMode,
    InputSettings,
    Method,
    MissingFisher,
    SharedSettings,
    parse_inputs,
    parse_shared,
    safety_input,
)


@functools.lru_cache(maxsize=64)
def _header_shapes(path: str) -> dict[str, tuple[int, ...]]:
    with safe_open(path, framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118


def _load_tasks(task: Any) -> dict[Any, Any]:
    """mergekit's ``LoadTensor`` task of each input model of a planned merge task."""
    from mergekit.io.tasks import GatherTensors

    gather = task.gather_tensors
    while not isinstance(gather, GatherTensors):  # PermutedVocabulary / TruncatedVocabulary
        gather = gather.gather_tensors
    arguments = gather.arguments()
    return {model: arguments[f"{model}:{info.name}"] for model, info in gather.weight_info.items()}


def _planned_shape(load: Any) -> tuple[int, ...] | None:
    """The shape of the tensor ``load`` would read, from the safetensors header (no data)."""
    from mergekit.io.tasks import LoaderCache

    index = LoaderCache().get(load.model).index
    names = [load.tensor, *(load.aliases or ()), *(load.tied_names or ())]
    found = next((n for n in names if n in index.tensor_paths), None)
    if found is None or not index.is_safetensors:
        return None
    return _header_shapes(os.path.join(index.base_path, index.tensor_paths[found]))[found]


def _differs(load: Any, base_load: Any) -> bool:
    tensor, base = load.execute(), base_load.execute()
    if tensor is None or base is None:
        return False
    return tensor.shape != base.shape or bool((tensor != base).any())


def validate_planned_merge(method: str, planned: Sequence[tuple[Any, Any]]) -> MergeSession:
    """Check a planned merge (``MergePlanner._tensors``: ``(WeightInfo, task)`` pairs).

    Returns the :class:`MergeSession` for the run, with ``settings`` and ``checks`` (Fisher
    file descriptions with sha256, fingerprint results) filled in. Raises :class:`SSTError`
    listing the problems (:func:`~sst_merge_plugin.method.checks.cannot_run`).
    """
    session = MergeSession(method)
    problems: list[str] = []
    # (label, path) -> [file, models whose folders may match its fingerprint, tensors matched]
    files: dict[tuple[str, str], list[Any]] = {}
    check_fingerprints = True  # the shared check_fingerprint (same for every tensor)
    projected: list[tuple[str, Any, dict[Any, InputSettings], FisherSources]] = []
    findings: dict[str, Finding] = {}
    for weight, task in planned:
        models = [m for m in task.model_order if m != task.base_model]
        try:
            settings = parse_shared(method, dict(task.parameters.items()))
            inputs = parse_inputs(
                method, {m: dict(task.input_parameters[m].items()) for m in models}
            )
            fishers = FisherSources.open(settings, inputs)
        except SSTError as error:
            raise _configuration_error(method, weight.name, task, planned, error) from None
        if settings.as_dict() not in session.settings:
            session.settings.append(settings.as_dict())
        for finding in sanity_findings(settings, inputs, fishers):
            findings.setdefault(finding.message, finding)
        check_fingerprints = settings.check_fingerprint is not False
        reference = fishers.reference
        if settings.write_adapter not in (None, AdapterMode.NONE) and (
            not reference.kind_spec.restricted
        ):
            raise SSTError(
                f"write_adapter: {settings.write_adapter} needs lora-kind Fisher files; "
                f"{reference.path.name} is {reference.kind!r}"
            )
        for label, opened in fishers.labelled().items():
            own = [m for m in models if label == f"{m}: fisher"]
            files.setdefault((label, str(opened.path)), [opened, [task.base_model, *own], set()])
        for label, opened in _check_tensor(weight.name, task, settings, inputs, fishers, problems):
            files[(label, str(opened.path))][2].add(weight.name)
        if settings.method in PROJECTING:
            projected.append((weight.name, task, inputs, fishers))
    labels = [label for label, _ in files]

    def key(label: str, path: str) -> str:
        return label if labels.count(label) == 1 else f"{label} ({path})"

    checks: dict[str, Any] = {"fisher_files": {}, "fingerprints": {}}
    for (label, path), (opened, models, matched) in files.items():
        if not matched and planned:
            problems.append(
                f"{label} {path!r} has Fisher entries for none of the merged tensors (file: "
                f"{opened.weight_names()[0]!r}, …; model: {planned[0][0].name!r}, …) — was it "
                "collected on another model?"
            )
        checks["fingerprints"][key(label, path)] = (
            _check_fingerprint(label, opened, models, problems)
            if check_fingerprints
            else FINGERPRINT_NOT_CHECKED
        )
        problems.extend(fisher_entry_problems(label, opened, matched))
    problems.extend(f.message for f in findings.values() if f.fatal)
    if not problems:
        problems.extend(_patch_problems(projected))
    if problems:
        raise cannot_run(method, problems)
    warn_findings(findings.values())
    for (label, path), (opened, _, _) in files.items():
        checks["fisher_files"][key(label, path)] = describe_fisher(opened)
    session.checks = checks
    return session


def _resolved(task: Any) -> tuple[Any, ...]:
    """The parameters mergekit resolved for one planned tensor (shared, then per input)."""
    per_input = tuple((str(m), dict(p.items())) for m, p in task.input_parameters.items())
    return dict(task.parameters.items()), per_input, tuple(map(str, task.model_order))


def _configuration_error(
    method: str, name: str, task: Any, planned: Sequence[tuple[Any, Any]], error: SSTError
) -> SSTError:
    """``error`` (settings or Fisher files) as a configuration error when every planned tensor
    resolves to the same parameters and inputs, else as one of tensor ``name`` (mergekit's
    filters and gradients resolve parameters per tensor)."""
    mine = _resolved(task)
    if all(_resolved(other) == mine for _, other in planned):
        return SSTError(f"{method}: invalid merge configuration: {error}")
    return SSTError(
        f"{method}: invalid parameters for tensor {name} (as mergekit resolved them for this "
        f"tensor): {error}"
    )


def _check_tensor(
    name: str,
    task: Any,
    settings: SharedSettings,
    inputs: dict[Any, InputSettings],
    fishers: FisherSources,
    problems: list[str],
) -> list[tuple[str, FisherFile]]:
    """Shape and ``missing_fisher: error`` checks of one planned 2-D tensor.

    Appends to ``problems``; returns the ``(label, file)`` pairs that have entries for ``name``.
    """
    loads = _load_tasks(task)
    base = loads[task.base_model]
    shape = _planned_shape(base)
    if shape is None or len(shape) != 2:
        return []
    labelled = fishers.labelled()
    present = [(label, f) for label, f in labelled.items() if name in f]
    for label, opened in present:
        if opened.weight_shape(name) != shape:
            problems.append(
                f"{name}: {label} {str(opened.path)!r} has Fisher entries for a weight of "
                f"shape {opened.weight_shape(name)}, but the model tensor has shape {shape}"
            )
    lacking = [label for label in labelled if label not in dict(present)]
    if not lacking or settings.missing_fisher != MissingFisher.ERROR:
        return present
    if settings.method == Method.SST_FISHER_MERGE:  # a missing file fails the whole tensor
        deltas = list(inputs)
    else:  # the inputs whose deltas the lacking files project
        whose = fishers.inputs_of(inputs)
        deltas = list(dict.fromkeys(m for label in lacking for m in whose[label]))
    if any(_differs(loads[m], base) for m in deltas):
        where = ", ".join(f"{label} {str(labelled[label].path)!r}" for label in lacking)
        problems.append(
            f"{name}: {where} has no Fisher entries for this tensor, but its delta is "
            "non-zero (missing_fisher: error; 'keep' adds the unprojected delta, 'drop' "
            "leaves it out)"
        )
    return present


#: tensors whose safety patch is checked against a restricted Fisher's subspace up front
#: (spread evenly over the planned ones; ``merge_tensor`` checks every projection again)
RESIDUAL_SAMPLE = 8


def _patch_problems(
    projected: Sequence[tuple[str, Any, dict[Any, InputSettings], FisherSources]],
) -> list[str]:
    """The projected deltas against their Fishers: first each file's recorded adapter digests
    (the restriction of a lora-kind file; the adapter applied while collecting an input's own
    gain file) against the ``base+lora`` adapter of every input whose delta it projects
    (:meth:`FisherSources.inputs_of`, :func:`~sst_merge_plugin.method.checks.adapter_problem`);
    when those pass, for restricted (lora-kind) Fishers, the part of each projected delta — as
    mergekit will read it, e.g. from its LoRA merge cache — outside the subspace of the file
    that projects it (``harm_fisher`` for the safety patch, ``cost_fisher`` for a utility delta;
    :func:`~sst_merge_plugin.method.checks.subspace_problem`) for :data:`RESIDUAL_SAMPLE`
    tensors spread over the merge. A stale cache or another adapter's Fishers affect every
    tensor alike; each projection is checked again while merging (at no extra cost), and a
    failure there leaves no output (the ``run_merge`` hook)."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for _, _, inputs, fishers in projected:
        labelled = fishers.labelled()
        for label, models in fishers.inputs_of(inputs).items():
            for model in models:
                lora = getattr(model, "lora", None)
                key = (str(labelled[label].path), getattr(lora, "path", ""))
                if lora is None or not os.path.isdir(lora.path) or key in seen:
                    continue
                seen.add(key)
                whose, own = _whose(model, inputs), label in fishers.own_files
                problem = adapter_problem(label, labelled[label], lora.path, whose, own)
                if problem is not None:
                    problems.append(problem)
    if problems:
        return problems
    outside: list[str] = []
    planned = [
        entry
        for entry in projected
        if entry[3].reference.kind_spec.restricted and entry[0] in entry[3].reference
    ]
    count = min(len(planned), RESIDUAL_SAMPLE)
    picked = sorted({round(i * (len(planned) - 1) / max(count - 1, 1)) for i in range(count)})
    for name, task, inputs, fishers in (planned[i] for i in picked):
        loads = _load_tasks(task)
        base = loads[task.base_model].execute()
        whose = fishers.inputs_of(inputs)
        for label in ("harm_fisher", "cost_fisher"):
            opened = fishers.labelled().get(label)
            for model in whose.get(label, ()) if opened is not None and name in opened else ():
                tensor = loads[model].execute()
                if base is None or tensor is None or tensor.shape != base.shape:
                    continue
                if torch.equal(base, tensor):
                    continue
                try:
                    residual = opened.get(name).subspace_residual(tensor.double() - base.double())
                except SSTError as error:
                    problems.append(f"{name}: {error}")
                    continue
                what = "the safety patch" if label == "harm_fisher" else f"{model}'s delta"
                problem = subspace_problem(name, residual, base, tensor, label, opened, what)
                if problem is not None:
                    outside.append(problem)
    return problems + outside + ([SUBSPACE_HINT] if outside else [])


def _whose(model: Any, inputs: dict[Any, InputSettings]) -> str:
    """``the safety input`` or ``the utility input <model>``, for messages."""
    return "the safety input" if model == safety_input(inputs) else f"the utility input {model}"


def _check_fingerprint(
    label: str, opened: FisherFile, models: list[Any], problems: list[str]
) -> str:
    """Compare ``opened``'s fingerprint with the folders of ``models``; returns the outcome."""
    candidates = {str(m): str(m.model.path) for m in models}
    outcome, problem = fingerprint_outcome(label, opened, candidates)
    if problem is not None:
        problems.append(problem)
    return outcome
