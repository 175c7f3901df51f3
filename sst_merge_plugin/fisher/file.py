"""The Fisher file (``docs/design.md`` §4.1): one safetensors file per collection run, no pickle.

Tensor keys, for each weight name ``N`` (the dense weight name mergekit sees, e.g.
``model.layers.0.self_attn.q_proj.weight``): ``N::<entry>`` for each entry of the file's kind
(:attr:`~sst_merge_plugin.core.fisher.FisherBase.required_entries` and ``optional_entries``;
entries ending in ``_trace`` are 0-d, the others 2-D):

* kind ``diag``: ``N::diag`` (``d_out × d_in``)
* kind ``kfac``: ``N::A`` (``d_in × d_in``), ``N::G`` (``d_out × d_out``)
* kind ``lora``: ``N::U`` (``d_out × r``), ``N::V`` (``d_in × r``), ``N::A_r``, ``N::G_r``
  (``r × r``), and optionally the 0-d full-space traces ``N::A_trace``, ``N::G_trace``

Header metadata (``__metadata__``, all strings): ``format`` (``sst-fisher/1``), ``kind``,
``objective``, ``n_tokens``, ``n_examples``, ``model_fingerprint`` (may be empty),
``data_sha256``, ``tool_version``; writers may add more string entries (dataset name, seed, ...).

:func:`write_fisher_file` validates every container and writes atomically, byte for byte
reproducibly (:func:`write_safetensors`: the standard layout with a canonical header, so equal
contents give equal sha256 digests). :class:`FisherFile` reads the header and the key layout
eagerly (so a missing or misspelt entry is reported before any merge starts) and the factors
lazily by weight name, memory-mapped, through a thread-safe cache of validated containers.
Nothing here depends on a particular kind: entries, shapes and containers come from the kind
registry (:mod:`sst_merge_plugin.core.kinds`).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sst_merge_plugin import __version__
from sst_merge_plugin.atomic import atomic_path
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.core.fisher import Fisher
from sst_merge_plugin.core.kinds import FisherKind, get_kind, kind_names
from sst_merge_plugin.fisher import Objective

FORMAT = "sst-fisher/1"
SEPARATOR = "::"
REQUIRED_METADATA = ("format", "kind", "objective", "n_tokens", "n_examples", "data_sha256")


class FisherFileError(SSTError):
    """A Fisher file is missing entries, corrupted, or inconsistent with another file or model."""


@dataclass(frozen=True)
class FisherMetadata:
    """What a Fisher file says about how it was collected (the header's string entries)."""

    kind: str
    objective: str
    n_tokens: int
    n_examples: int
    data_sha256: str
    model_fingerprint: str | None = None
    tool_version: str = __version__
    extra: Mapping[str, str] = field(default_factory=dict)

    def as_header(self) -> dict[str, str]:
        header = {
            "format": FORMAT,
            "kind": self.kind,
            "objective": self.objective,
            "n_tokens": str(int(self.n_tokens)),
            "n_examples": str(int(self.n_examples)),
            "data_sha256": self.data_sha256,
            "model_fingerprint": self.model_fingerprint or "",
            "tool_version": self.tool_version,
        }
        clash = sorted(set(self.extra) & set(header))
        if clash:
            raise FisherFileError(f"extra metadata may not override {clash}")
        header.update({str(k): str(v) for k, v in self.extra.items()})
        return header


def write_fisher_file(
    path: str | os.PathLike[str],
    fishers: Mapping[str, Fisher],
    metadata: FisherMetadata,
    *,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``fishers`` (weight name → container) to ``path`` atomically.

    Factors are stored as ``dtype`` (traces as float64). Raises :class:`FisherFileError` for an
    empty mapping, a kind different from ``metadata.kind``, a bad weight name, an unknown
    objective.
    """
    if not fishers:
        raise FisherFileError("refusing to write a Fisher file with no weights")
    if metadata.kind not in kind_names():
        raise FisherFileError(f"unknown Fisher kind {metadata.kind!r}")
    if metadata.objective not in Objective.values():
        raise FisherFileError(
            f"unknown objective {metadata.objective!r}; expected one of "
            f"{', '.join(Objective.values())}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name, fisher in fishers.items():
        if SEPARATOR in name or not name:
            raise FisherFileError(f"invalid weight name {name!r} (empty or containing '::')")
        if fisher.kind != metadata.kind:
            raise FisherFileError(
                f"{name}: Fisher of kind {fisher.kind!r} in a {metadata.kind!r} file"
            )
        for suffix, tensor in fisher.entries().items():
            stored = tensor if tensor.ndim == 0 else tensor.to(dtype)
            tensors[f"{name}{SEPARATOR}{suffix}"] = stored.detach().cpu().contiguous()
    header = metadata.as_header()
    with atomic_path(path) as temporary:
        write_safetensors(temporary, tensors, header)


#: torch dtype → safetensors dtype tag, in the order of safetensors' ``Dtype`` enum (the data
#: section is sorted by it, descending, then by name; element sizes never decrease along it)
_DTYPE_TAGS = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
}
_DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(_DTYPE_TAGS)}


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` and the string ``metadata`` to ``path`` as a safetensors file whose
    bytes depend only on the content.

    ``safetensors.torch.save_file`` serialises the metadata from a Rust ``HashMap``, so its
    order, hence the file's bytes and sha256, changes from run to run. This writer produces the
    standard layout with a canonical header: an 8-byte little-endian header length; the compact
    JSON header (``__metadata__`` with sorted keys first, then the tensor entries in data order)
    padded with spaces to a multiple of 8 bytes; the tensors' little-endian bytes, ordered by
    dtype (safetensors' dtype order, largest first) and then name — the order ``save_file``
    uses, so every tensor is aligned to its element size. With at most one metadata entry the
    bytes equal ``save_file``'s.
    """
    if sys.byteorder != "little":  # pragma: no cover - torch's big-endian hosts are exotic
        raise FisherFileError("writing safetensors files needs a little-endian machine")
    for name, tensor in tensors.items():
        if tensor.dtype not in _DTYPE_TAGS:
            raise FisherFileError(f"{name}: cannot store dtype {tensor.dtype} in safetensors")
    order = sorted(tensors, key=lambda name: (-_DTYPE_RANK[tensors[name].dtype], name))
    entries: dict[str, dict[str, object]] = {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": _DTYPE_TAGS[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header = {"__metadata__": dict(sorted(metadata.items())), **entries} if metadata else entries
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for name in order:
            flat = tensors[name].detach().cpu().contiguous().reshape(-1)
            handle.write(flat.view(torch.uint8).numpy().data)


class FisherFile:
    """A Fisher file opened for reading (see the module doc).

    Construction validates the header and that every weight has exactly its kind's entries;
    :meth:`get` loads, validates and caches one weight's container.
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_entries: int = 64) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FisherFileError(f"Fisher file {str(self.path)!r} does not exist")
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                header = handle.metadata() or {}
                shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as error:
            raise FisherFileError(
                f"{str(self.path)!r} is not a readable safetensors file ({error})"
            ) from None
        #: the header's string entries, sorted by key (``safe_open`` returns them in a
        #: different order on every call; reports list them in this order)
        self.metadata: dict[str, str] = dict(sorted(header.items()))
        missing = [key for key in REQUIRED_METADATA if key not in header]
        if missing:
            raise FisherFileError(
                f"{str(self.path)!r} is not an SST Fisher file: header lacks {missing}"
            )
        if header["format"] != FORMAT:
            raise FisherFileError(
                f"{str(self.path)!r}: unsupported format {header['format']!r} (expected {FORMAT})"
            )
        self.kind: str = header["kind"]
        if self.kind not in kind_names():
            raise FisherFileError(f"{str(self.path)!r}: unknown Fisher kind {self.kind!r}")
        self.kind_spec: FisherKind = get_kind(self.kind)
        #: weight name → entry suffix → shape
        self._entries = self._group_entries(shapes)
        self._cache: OrderedDict[str, Fisher] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()

    def _group_entries(self, shapes: Mapping[str, list[int]]) -> dict[str, dict[str, list[int]]]:
        container = self.kind_spec.container
        required = set(container.required_entries)
        allowed = required | set(container.optional_entries)
        found: dict[str, dict[str, list[int]]] = {}
        for key in shapes:
            name, sep, suffix = key.rpartition(SEPARATOR)
            if not sep or suffix not in allowed:
                raise FisherFileError(
                    f"{str(self.path)!r}: unexpected entry {key!r} in a {self.kind!r} Fisher "
                    f"file (expected NAME::{{{', '.join(sorted(allowed))}}})"
                )
            expected_ndim = 0 if suffix.endswith("_trace") else 2
            if len(shapes[key]) != expected_ndim:
                raise FisherFileError(
                    f"{str(self.path)!r}: entry {key!r} has shape {shapes[key]}, expected a "
                    f"{expected_ndim}-D tensor"
                )
            found.setdefault(name, {})[suffix] = shapes[key]
        if not found:
            raise FisherFileError(f"{str(self.path)!r}: the file holds no Fisher entries")
        for name, suffixes in found.items():
            lacking = sorted(required - set(suffixes))
            if lacking:
                raise FisherFileError(
                    f"{str(self.path)!r}: weight {name!r} lacks the entr"
                    f"{'y' if len(lacking) == 1 else 'ies'} "
                    + ", ".join(f"{name}::{s}" for s in lacking)
                )
        return dict(sorted(found.items()))

    # ---- header information ------------------------------------------------------------
    @property
    def objective(self) -> str:
        return self.metadata["objective"]

    @property
    def model_fingerprint(self) -> str | None:
        return self.metadata.get("model_fingerprint") or None

    @property
    def n_tokens(self) -> int:
        return int(self.metadata["n_tokens"])

    @property
    def n_examples(self) -> int:
        return int(self.metadata["n_examples"])

    def weight_names(self) -> list[str]:
        """Sorted weight names with entries in this file."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def weight_shape(self, name: str) -> tuple[int, int]:
        """``(d_out, d_in)`` of ``name``'s weight, from the header (nothing is loaded)."""
        self._require(name)
        return self.kind_spec.container.weight_shape_of(self._entries[name])

    def check_compatible(self, other: FisherFile) -> None:
        """Raise :class:`FisherFileError` unless both files have one kind and one fingerprint."""
        if self.kind != other.kind:
            raise FisherFileError(
                f"different Fisher kinds: {self.kind!r} ({self.path.name}) vs "
                f"{other.kind!r} ({other.path.name})"
            )
        mine, theirs = self.model_fingerprint, other.model_fingerprint
        if mine and theirs and mine != theirs:
            raise FisherFileError(
                f"the files were collected on different models (model_fingerprint "
                f"{mine[:12]}… vs {theirs[:12]}…)"
            )

    # ---- factors ---------------------------------------------------------------------------
    def _require(self, name: str) -> None:
        if name not in self._entries:
            raise FisherFileError(f"{str(self.path)!r} has no Fisher entries for {name!r}")

    def get(self, name: str, device: torch.device | str | None = None) -> Fisher:
        """The validated container of ``name`` (float32 or as stored), moved to ``device``."""
        self._require(name)
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None:
                self._cache.move_to_end(name)
        if cached is None:
            cached = self._load(name)
            with self._lock:
                self._cache[name] = cached
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return cached if device is None else cached.to(device=device)

    def _load(self, name: str) -> Fisher:
        container = self.kind_spec.container
        suffixes = container.required_entries + container.optional_entries
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                tensors = {
                    suffix: handle.get_tensor(f"{name}{SEPARATOR}{suffix}")
                    for suffix in suffixes
                    if suffix in self._entries[name]
                }
        except (SafetensorError, OSError) as error:
            raise FisherFileError(f"{str(self.path)!r}: cannot read {name!r} ({error})") from None
        try:
            return container.from_entries(tensors)
        except SSTError as error:
            raise FisherFileError(f"{str(self.path)!r}, weight {name!r}: {error}") from None
