"""The Fisher file contract (DESIGN 3.1): round trip, header, layout errors, atomic writes."""

from __future__ import annotations

import json
import struct
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sst_merge_plugin.core import DiagFisher, KFACFisher, LoRAFisher
from sst_merge_plugin.core.kinds import get_kind, kind_names
from sst_merge_plugin.fisher.file import (
    FORMAT,
    FisherFile,
    FisherFileError,
    FisherMetadata,
    write_fisher_file,
    write_safetensors,
)
from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint


def spd(dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(dim, 2 * dim, generator=torch.Generator().manual_seed(seed))
    return x @ x.T / (2 * dim)


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(rows, cols, generator=g)).Q


def make(kind: str, d_out: int = 6, d_in: int = 5):
    if kind == "diag":
        return DiagFisher(torch.rand(d_out, d_in, generator=torch.Generator().manual_seed(1)))
    if kind == "kfac":
        return KFACFisher(spd(d_in, 1), spd(d_out, 2))
    u, v = orthonormal(d_out, 2, 3), orthonormal(d_in, 2, 4)
    a, g = spd(d_in, 5), spd(d_out, 6)
    return LoRAFisher(u, v, v.T @ a @ v, u.T @ g @ u, A_trace=float(a.trace()),
                      G_trace=float(g.trace()))  # fmt: skip


def meta(kind: str, **kw) -> FisherMetadata:
    return FisherMetadata(kind=kind, objective="refusal", n_tokens=123, n_examples=7,
                          data_sha256="ab" * 32, **kw)  # fmt: skip


def test_entry_tables_cover_every_kind():
    assert kind_names() == ("diag", "kfac", "lora")
    for kind in kind_names():
        container = get_kind(kind).container
        assert container.kind == kind and container.required_entries


@pytest.mark.parametrize("kind", ["diag", "kfac", "lora"])
def test_round_trip_with_metadata(tmp_path, kind):
    fishers = {"model.layers.0.mlp.down_proj.weight": make(kind), "lm.x.weight": make(kind, 3, 4)}
    path = tmp_path / "f.safetensors"
    write_fisher_file(path, fishers, meta(kind, model_fingerprint="f" * 64, extra={"seed": "3"}))
    opened = FisherFile(path)
    assert opened.kind == kind and opened.objective == "refusal"
    assert opened.n_tokens == 123 and opened.n_examples == 7
    assert opened.metadata["format"] == FORMAT and opened.metadata["seed"] == "3"
    assert opened.model_fingerprint == "f" * 64
    assert opened.weight_names() == sorted(fishers)
    assert opened.weight_shape("lm.x.weight") == (3, 4)
    for name, original in fishers.items():
        loaded = opened.get(name)
        assert type(loaded) is type(original)
        for (key, a), b in zip(vars(original).items(), vars(loaded).values(), strict=True):
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(b.double(), a.double(), msg=key)
            else:
                assert a == pytest.approx(b)
    assert opened.get(next(iter(fishers))) is opened.get(next(iter(fishers)))  # cached


def test_safetensors_writer_equals_the_reference_writer(tmp_path):
    """Where ``save_file``'s output is deterministic (at most one metadata entry), ours is the
    same bytes, for every dtype it stores (the data section's dtype/name order included)."""
    g = torch.Generator().manual_seed(0)
    tensors = {
        "z::A": torch.randn(3, 5, generator=g),
        "a::A_trace": torch.tensor(2.5, dtype=torch.float64),
        "b::U": torch.randn(4, 2, generator=g, dtype=torch.float64),
        "half": torch.randn(7, generator=g).half(),
        "brain": torch.randn(3, generator=g).bfloat16(),
        "ints": torch.arange(5),
        "i32": torch.tensor([3, 4, 5], dtype=torch.int32),
        "i16": torch.tensor([3], dtype=torch.int16),
        "i8": torch.tensor([1, -2], dtype=torch.int8),
        "bytes": torch.arange(3, dtype=torch.uint8),
        "flags": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }
    for metadata in ({"format": "pt"}, {"k": 'ünï"\\ \n\x01/'}, None):
        save_file(tensors, str(tmp_path / "reference.safetensors"), metadata=metadata)
        write_safetensors(tmp_path / "ours.safetensors", tensors, metadata or {})
        ours = (tmp_path / "ours.safetensors").read_bytes()
        assert ours == (tmp_path / "reference.safetensors").read_bytes()


def test_written_files_are_canonical_and_reproducible(tmp_path):
    """``save_file`` writes its metadata in a different order on every call (a Rust HashMap), so
    equal Fisher files had different sha256 digests; ours are equal byte for byte, with the
    header sorted, and read back by safetensors' own reader; ``FisherFile.metadata`` is sorted
    too (``safe_open`` returns it unordered)."""
    fishers = {
        "model.layers.0.mlp.down_proj.weight": make("lora"),
        "lm.x.weight": make("lora", 3, 4),
    }
    extra = {f"key_{index}": str(index) for index in range(10, 0, -1)}
    paths = [tmp_path / "one.safetensors", tmp_path / "two.safetensors"]
    for path in paths:
        write_fisher_file(path, fishers, meta("lora", model_fingerprint="f" * 64, extra=extra))
    data = paths[0].read_bytes()
    assert data == paths[1].read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    assert length % 8 == 0 and next(iter(header)) == "__metadata__"
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    with safe_open(str(paths[0]), framework="pt") as handle:
        assert handle.metadata() == header["__metadata__"]
        for name, fisher in fishers.items():
            for suffix, tensor in fisher.entries().items():
                stored = handle.get_tensor(f"{name}::{suffix}")
                assert stored.dtype == (
                    torch.float64 if suffix.endswith("_trace") else torch.float32
                )
                torch.testing.assert_close(stored.double(), tensor.double(), rtol=1e-7, atol=0)
    opened = [FisherFile(path) for path in paths for _ in range(3)]
    assert all(list(f.metadata) == sorted(header["__metadata__"]) for f in opened)


def test_missing_entry_and_unknown_entry_are_reported(tmp_path):
    path = tmp_path / "f.safetensors"
    header = meta("kfac").as_header()
    save_file({"w::A": spd(3, 1)}, str(path), metadata=header)
    with pytest.raises(FisherFileError, match=r"'w' lacks the entry w::G"):
        FisherFile(path)
    save_file({"w::A": spd(3, 1), "w::G": spd(2, 1), "w::diag": spd(2, 1)}, str(path),
              metadata=header)  # fmt: skip
    with pytest.raises(FisherFileError, match="unexpected entry 'w::diag'"):
        FisherFile(path)
    save_file({"w::A": spd(3, 1)}, str(path), metadata={"format": "other"})
    with pytest.raises(FisherFileError, match="header lacks"):
        FisherFile(path)


def test_corrupted_file_is_reported(tmp_path):
    path = tmp_path / "f.safetensors"
    write_fisher_file(path, {"w": make("kfac")}, meta("kfac"))
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FisherFileError, match="not a readable safetensors file"):
        FisherFile(tmp_path / "truncated.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(FisherFileError, match="not a readable safetensors file"):
        FisherFile(tmp_path / "garbage.safetensors")
    with pytest.raises(FisherFileError, match="does not exist"):
        FisherFile(tmp_path / "nope.safetensors")


def test_invalid_factor_is_reported_on_get(tmp_path):
    path = tmp_path / "f.safetensors"
    bad = spd(3, 1)
    bad[0, 0] = float("nan")
    save_file({"w::A": bad, "w::G": spd(2, 1)}, str(path), metadata=meta("kfac").as_header())
    opened = FisherFile(path)  # layout is fine
    with pytest.raises(FisherFileError, match=r"weight 'w'.*NaN"):
        opened.get("w")
    with pytest.raises(FisherFileError, match="no Fisher entries for 'v'"):
        opened.get("v")


def test_write_is_atomic_and_validates(tmp_path):
    path = tmp_path / "f.safetensors"
    with pytest.raises(FisherFileError, match="no weights"):
        write_fisher_file(path, {}, meta("diag"))
    with pytest.raises(FisherFileError, match="of kind 'kfac' in a 'diag' file"):
        write_fisher_file(path, {"w": make("kfac")}, meta("diag"))
    with pytest.raises(FisherFileError, match="unknown objective"):
        write_fisher_file(path, {"w": make("diag")}, FisherMetadata("diag", "x", 1, 1, "0"))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_compatibility_checks(tmp_path):
    write_fisher_file(tmp_path / "a", {"w": make("kfac")}, meta("kfac", model_fingerprint="1" * 64))
    write_fisher_file(tmp_path / "b", {"w": make("kfac")}, meta("kfac", model_fingerprint="2" * 64))
    write_fisher_file(tmp_path / "c", {"w": make("diag")}, meta("diag"))
    write_fisher_file(tmp_path / "d", {"w": make("kfac")}, meta("kfac"))
    a, b, c, d = (FisherFile(tmp_path / x) for x in "abcd")
    with pytest.raises(FisherFileError, match="different models"):
        a.check_compatible(b)
    with pytest.raises(FisherFileError, match="different Fisher kinds"):
        a.check_compatible(c)
    a.check_compatible(d)  # a file without a fingerprint is accepted


def test_concurrent_reads_share_one_container(tmp_path):
    path = tmp_path / "f.safetensors"
    write_fisher_file(path, {f"w{i}": make("kfac") for i in range(4)}, meta("kfac"))
    opened = FisherFile(path)
    results: list[object] = []

    def read() -> None:
        results.extend(opened.get(f"w{i}") for i in range(4))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 16
    torch.testing.assert_close(results[0].A, opened.get("w0").A)


def test_checkpoint_fingerprint_is_dtype_independent_and_content_sensitive(tmp_path):
    g = torch.Generator().manual_seed(0)
    weights = {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(5, generator=g)}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        (tmp_path / name).mkdir()
        cast = {k: v.to(torch.bfloat16).to(dtype) for k, v in weights.items()}
        save_file(cast, str(tmp_path / name / "model.safetensors"))
    assert checkpoint_fingerprint(tmp_path / "fp32") == checkpoint_fingerprint(tmp_path / "bf16")
    (tmp_path / "other").mkdir()
    changed = {k: v.to(torch.bfloat16).clone() for k, v in weights.items()}
    changed["a.weight"][3, 0] += 1
    save_file(changed, str(tmp_path / "other" / "model.safetensors"))
    assert checkpoint_fingerprint(tmp_path / "other") != checkpoint_fingerprint(tmp_path / "bf16")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FisherFileError, match=r"no \*\.safetensors"):
        checkpoint_fingerprint(tmp_path / "empty")
