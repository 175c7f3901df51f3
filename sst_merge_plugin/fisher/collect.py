"""Fisher collection as a library: a loaded model + tokenized batches or prompts → containers.

Two levels:

* :func:`accumulate_statistics` / :func:`collect_statistics` — the pass itself (then the
  averaged, validated containers) over already-tokenized batches
  (``input_ids``, ``attention_mask``, ``labels`` with ``-100`` on non-loss positions, Hugging Face
  alignment as produced by :func:`sst_merge_plugin.data.chat.collate`). Per batch: one forward
  with explicit ``position_ids`` (so left and right padding are equivalent), the **summed**
  token NLL of the loss positions (:func:`summed_nll`), one backward. Parameters are frozen and
  the model is in eval mode during the pass (restored afterwards): only activation gradients are
  computed (the statistics need ``δ = ∂ℓ/∂y``, never ``∂ℓ/∂W``). The estimator and its
  normalisation are documented in :mod:`sst_merge_plugin.core.statistics`.
* :func:`collect_fisher` — takes the prepared data of an objective
  (:func:`~.objectives.prepare_data`; for ``kl`` it samples the responses first), batches it,
  runs :func:`collect_statistics` and returns the containers with their
  :class:`~.file.FisherMetadata`.
* :func:`collect_fisher_file` — a :class:`~.request.FisherRequest` end to end (what
  ``sst-merge fisher``, the Fisher cache and the FusionBench algorithm call): checks, loads,
  collects, writes the file atomically.

Every input error is an :class:`SSTError` raised before anything is written; Ctrl-C during the
pass propagates with the hooks removed and no output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sst_merge_plugin.atomic import check_writable
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.fisher import Fisher
from sst_merge_plugin.core.kinds import get_kind
from sst_merge_plugin.core.statistics import LayerStatistics, compute_dtype
from sst_merge_plugin.data.chat import IGNORE_INDEX, EncodedChat, collate
from sst_merge_plugin.fisher.adapter import LoRAAdapter, adapter_subspaces, read_lora_adapter
from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file
from sst_merge_plugin.fisher.hooks import FisherHooks
from sst_merge_plugin.fisher.objectives import PreparedData, with_sampled_responses
from sst_merge_plugin.fisher.request import FisherRequest
from sst_merge_plugin.fisher.sampling import model_device
from sst_merge_plugin.fisher.targets import find_target_layers, layer_shape, linear_candidates

Subspaces = Mapping[str, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class CollectedFisher:
    """Per-weight containers (float64) and the counts they were averaged over."""

    fishers: dict[str, Fisher]
    n_tokens: int  #: non-pad positions (the ``N`` every statistic is divided by)
    n_loss_tokens: int  #: positions whose next token carries the loss
    n_examples: int  #: sequences


@dataclass(frozen=True)
class FisherResult:
    """What :func:`collect_fisher` returns: the containers and the file metadata."""

    fishers: dict[str, Fisher]
    metadata: FisherMetadata
    examples: list[EncodedChat] = field(repr=False)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the Fisher file atomically (:func:`~.file.write_fisher_file`)."""
        write_fisher_file(path, self.fishers, self.metadata)


@contextlib.contextmanager
def collection_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration (both restored afterwards)."""
    was_training = model.training
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)
        model.train(was_training)


def summed_nll(model: nn.Module, batch: Mapping[str, Tensor], *, track_inputs: bool) -> Tensor:
    """``ℓ = −Σ log p(labels[b, t] | input_ids[b, :t])`` over positions with ``labels != -100``.

    ``position_ids`` are ``cumsum(attention_mask) − 1`` (padding-side independent). With
    ``track_inputs`` the input embeddings are a grad-requiring leaf, so activation gradients
    exist even when every parameter is frozen.
    """
    attention_mask = batch["attention_mask"]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    embeddings = model.get_input_embeddings()(batch["input_ids"])
    if track_inputs:
        embeddings = embeddings.detach().requires_grad_(True)
    logits = model(
        inputs_embeds=embeddings,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).logits
    targets = batch["labels"][:, 1:]
    selected = targets != IGNORE_INDEX
    scores = logits[:, :-1][selected]
    return F.cross_entropy(
        scores.to(compute_dtype(scores.dtype)), targets[selected], reduction="sum"
    )


def _checked_batch(batch: Mapping[str, Tensor], index: int, device: torch.device) -> dict:
    missing = [key for key in ("input_ids", "attention_mask", "labels") if key not in batch]
    if missing:
        raise SSTError(f"batch {index} lacks {missing}")
    input_ids, attention_mask, labels = (
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
    )
    if (
        input_ids.ndim != 2
        or attention_mask.shape != input_ids.shape
        or labels.shape != input_ids.shape
    ):
        raise SSTError(
            f"batch {index}: input_ids {tuple(input_ids.shape)}, attention_mask "
            f"{tuple(attention_mask.shape)} and labels {tuple(labels.shape)} must be one 2-D shape"
        )
    real = attention_mask != 0
    if not bool(real.any()):
        raise SSTError(f"batch {index} contains only padding (attention_mask is all 0)")
    empty_rows = (~real.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise SSTError(f"batch {index}: row(s) {empty_rows} contain only padding")
    loss = labels[:, 1:] != IGNORE_INDEX
    if bool((loss & ~real[:, 1:]).any()):
        raise SSTError(f"batch {index}: labels on padding positions")
    if not bool(loss.any()):
        raise SSTError(f"batch {index} has no loss tokens (every label is -100)")
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": labels.to(device),
    }


def resolve_layers(
    model: nn.Module, kind: str, targets: str | None, subspaces: Subspaces | None
) -> dict[str, nn.Module]:
    """The layers to hook: ``targets`` (see :mod:`.targets`); for a restricted kind (``lora``)
    only the adapted ones.

    A subspace for a weight the model does not have, or of the wrong shape, is an error.
    """
    layers = find_target_layers(model, targets)
    if not get_kind(kind).restricted:
        if subspaces is not None:
            raise SSTError(
                f"a restriction subspace (--restrict-to) does not apply to --kind {kind}"
            )
        return layers
    if not subspaces:
        raise SSTError(f"--kind {kind} needs --restrict-to ADAPTER (the subspace to restrict to)")
    candidates = linear_candidates(model)
    for name, (U, V) in subspaces.items():
        if name not in candidates:
            raise SSTError(
                f"the --restrict-to adapter adapts {name!r}, which is not a Linear weight of the "
                "model: the adapter was made for another base model"
            )
        if layer_shape(candidates[name]) != (U.shape[0], V.shape[0]):
            raise SSTError(
                f"the --restrict-to adapter's subspace for {name!r} is for a "
                f"{(U.shape[0], V.shape[0])} weight, the model's is {layer_shape(candidates[name])}"
            )
    restricted = {name: module for name, module in layers.items() if name in subspaces}
    if not restricted:
        raise SSTError(
            "none of the targeted layers is adapted by the --restrict-to adapter (it adapts "
            f"{', '.join(sorted(subspaces)[:3])}...)"
        )
    return restricted


@dataclass
class AccumulatedStatistics:
    """The float64 accumulators after a pass, before averaging (see :mod:`sst_merge_plugin.core.statistics`)."""

    statistics: dict[str, LayerStatistics]
    n_tokens: int = 0
    n_loss_tokens: int = 0
    n_examples: int = 0

    def finalize(self) -> CollectedFisher:
        """Divide by ``n_tokens`` and build the validated containers."""
        if self.n_examples == 0:
            raise SSTError("no data: the collection received no batches")
        fishers = {name: stat.result(self.n_tokens) for name, stat in self.statistics.items()}
        return CollectedFisher(fishers, self.n_tokens, self.n_loss_tokens, self.n_examples)


def accumulate_statistics(
    model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    kind: str,
    targets: str | None = None,
    subspaces: Subspaces | None = None,
    total: int | None = None,
    progress: bool = False,
) -> AccumulatedStatistics:
    """Accumulate the ``kind`` statistics of the targeted layers over ``batches`` (module doc).

    ``subspaces`` (dense weight name → ``(U, V)``) restricts ``lora`` collection; weights
    without one are skipped. Raises :class:`SSTError` for malformed, padding-only or loss-free
    batches and a non-finite loss.
    """
    layers = resolve_layers(model, kind, targets, subspaces)
    device = model_device(model)
    accumulated = AccumulatedStatistics(
        {
            name: get_kind(kind).new_statistics(
                name, layer_shape(module), None if subspaces is None else subspaces[name]
            )
            for name, module in layers.items()
        }
    )
    with collection_mode(model), FisherHooks(layers, accumulated.statistics) as hooks:
        iterator = tqdm(
            batches, total=total, desc=f"{kind} Fisher", unit="batch", disable=not progress
        )
        for index, raw_batch in enumerate(iterator):
            batch = _checked_batch(raw_batch, index, device)
            hooks.begin_batch(batch["attention_mask"])
            loss = summed_nll(model, batch, track_inputs=True)
            hooks.end_forward()
            if not bool(torch.isfinite(loss)):
                raise SSTError(f"batch {index}: the loss is not finite ({float(loss.detach())})")
            loss.backward()
            accumulated.n_tokens += int((batch["attention_mask"] != 0).sum())
            accumulated.n_loss_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            accumulated.n_examples += int(batch["input_ids"].shape[0])
    return accumulated


def collect_statistics(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]], **options: Any
) -> CollectedFisher:
    """:func:`accumulate_statistics` then :meth:`~AccumulatedStatistics.finalize`.

    Raises :class:`SSTError` also for no batches at all and for non-finite statistics.
    """
    return accumulate_statistics(model, batches, **options).finalize()


def example_batches(
    examples: Sequence[EncodedChat], *, batch_size: int, pad_id: int
) -> Iterator[dict[str, Tensor]]:
    """Right-padded batches of ``batch_size`` consecutive examples (:func:`data.chat.collate`)."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start : start + batch_size], pad_id, "right")


def tokens_sha256(examples: Sequence[EncodedChat]) -> str:
    """sha256 over every example's ``response_start`` and token ids (what was collected on)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{example.response_start}:{len(example.input_ids)}:".encode())
        digest.update(torch.tensor(example.input_ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (pad positions are masked either way)."""
    for value in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            return value
    raise SSTError("the tokenizer has neither a pad_token_id nor an eos_token_id to pad with")


def resolve_subspaces(
    restrict_to: str
    | os.PathLike[str]
    | LoRAAdapter
    | Sequence[LoRAAdapter | str | os.PathLike[str]]
    | Subspaces
    | None,
) -> tuple[Subspaces | None, dict[str, str]]:
    """``restrict_to`` as subspaces, plus metadata naming its source: the adapter folder(s) and
    digest(s), ``;``-separated for a joint span of several adapters."""
    if restrict_to is None or (isinstance(restrict_to, Sequence) and not restrict_to):
        return None, {}
    if isinstance(restrict_to, Mapping):
        return dict(restrict_to), {"restrict_to": "(subspaces given in Python)"}
    many = (
        restrict_to
        if isinstance(restrict_to, Sequence) and not isinstance(restrict_to, str)
        else [restrict_to]
    )
    adapters = [a if isinstance(a, LoRAAdapter) else read_lora_adapter(a) for a in many]
    info = {
        "restrict_to": ";".join(str(a.path) for a in adapters),
        "restrict_to_sha256": ";".join(a.sha256 for a in adapters),
    }
    return adapter_subspaces(*adapters), info


def collect_fisher(
    model: nn.Module,
    tokenizer: Any,
    data: PreparedData,
    *,
    kind: str,
    targets: str | None = None,
    restrict_to: str
    | os.PathLike[str]
    | LoRAAdapter
    | Sequence[LoRAAdapter | str | os.PathLike[str]]
    | Subspaces
    | None = None,
    batch_size: int = 8,
    model_fingerprint: str | None = None,
    extra: Mapping[str, str] | None = None,
    progress: bool = False,
) -> FisherResult:
    """Collect the ``kind`` Fisher of ``data`` (from :func:`~.objectives.prepare_data`) on ``model``.

    For ``kl`` the responses are sampled from ``model`` first (seeded by ``data.seed``).
    ``restrict_to`` (adapter folder, :class:`~.adapter.LoRAAdapter` or subspaces) is required
    for ``kind="lora"``. ``extra`` is added to the file metadata. Kind, targets and subspaces
    are validated before any sampling or forward pass.
    """
    get_kind(kind)
    if batch_size < 1:
        raise SSTError(f"batch size must be >= 1, got {batch_size}")
    subspaces, restrict_info = resolve_subspaces(restrict_to)
    resolve_layers(model, kind, targets, subspaces)
    pad_id = pad_token_id(tokenizer)
    examples = with_sampled_responses(
        data, model, tokenizer, batch_size=batch_size, pad_id=pad_id, progress=progress
    )
    collected = collect_statistics(
        model,
        example_batches(examples, batch_size=batch_size, pad_id=pad_id),
        kind=kind,
        targets=targets,
        subspaces=subspaces,
        total=-(-len(examples) // batch_size),
        progress=progress,
    )
    metadata = FisherMetadata(
        kind=kind,
        objective=data.objective,
        n_tokens=collected.n_tokens,
        n_examples=collected.n_examples,
        data_sha256=data.data_sha256,
        model_fingerprint=model_fingerprint,
        extra={
            "n_loss_tokens": str(collected.n_loss_tokens),
            "tokens_sha256": tokens_sha256(examples),
            "seed": str(data.seed),
            "targets": targets or "default",
            "max_length": str(data.max_length),
            **({"response_tokens": str(data.response_tokens)} if data.objective == "kl" else {}),
            **restrict_info,
            **dict(extra or {}),
        },
    )
    return FisherResult(collected.fishers, metadata, examples)


def collect_fisher_file(
    request: FisherRequest, out: str | os.PathLike[str], *, progress: bool = True
) -> Path:
    """Collect ``request`` and write the Fisher file ``out`` atomically; returns its path.

    Order of work: the output path (writable, its folder creatable), the data, the adapters and ``targets`` are checked first
    (the targets and adapter shapes against a weightless meta-device copy of the model built
    from its ``config.json``), then the tokenizer encodes the data; only then is the model
    loaded, the ``kl`` responses sampled, the statistics collected and the file written. Any
    error is an :class:`SSTError` and leaves no file; so does Ctrl-C.
    """
    from sst_merge_plugin.fisher.adapter import check_adapter_matches
    from sst_merge_plugin.fisher.fingerprint import checkpoint_files, checkpoint_fingerprint
    from sst_merge_plugin.fisher.objectives import prepare_data
    from sst_merge_plugin.fisher.targets import meta_model

    out = Path(out)
    check_writable(out, "--out")
    if request.device == "cuda" and not torch.cuda.is_available():
        raise SSTError("--device cuda was requested but no CUDA device is available")
    model_dir = Path(request.model).expanduser()
    checkpoint_files(model_dir)
    data_arguments, extra = request.select_data()
    adapter = read_lora_adapter(request.adapter) if request.adapter else None
    restrict = [read_lora_adapter(path) for path in request.restrict_to]
    skeleton = meta_model(model_dir)
    shapes = {name: layer_shape(module) for name, module in linear_candidates(skeleton).items()}
    for lora_adapter in (adapter, *restrict):
        if lora_adapter is not None:
            check_adapter_matches(lora_adapter, shapes, str(model_dir))
    resolve_layers(
        skeleton, request.kind, request.targets, adapter_subspaces(*restrict) if restrict else None
    )
    del skeleton

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise SSTError(f"cannot load a tokenizer from {str(model_dir)!r}: {error}") from None
    data = prepare_data(
        tokenizer,
        objective=request.objective,
        seed=request.seed,
        max_length=request.max_length,
        response_tokens=request.response_tokens,
        **data_arguments,
    )
    fingerprint = checkpoint_fingerprint(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter.path))
        extra.update(adapter=str(adapter.path), adapter_sha256=adapter.sha256)
    model.to(str(request.device))
    extra.update(base_model=str(model_dir), device=str(request.device))
    result = collect_fisher(
        model,
        tokenizer,
        data,
        kind=request.kind,
        targets=request.targets,
        restrict_to=restrict or None,
        batch_size=request.batch_size,
        model_fingerprint=fingerprint,
        extra=extra,
        progress=progress,
    )
    result.write(out)
    return out
