"""Builders shared by test modules of different areas (no tests here; pytest puts ``tests/`` on
``sys.path``, so modules import them as ``from support import ...``).

* :func:`tiny_llama` — a seeded random 2-layer Llama (4 heads, 2 KV heads, FFN ``2 × hidden``);
  each caller passes its vocabulary and any other ``LlamaConfig`` fields.
* :func:`byte_level_bpe` — a byte-level BPE tokenizer trained on a small corpus.
* :func:`python_output` — what a snippet prints in a fresh interpreter with another hash seed.
* :func:`read_only_folder` — a folder this process cannot write in (also as root).
* :func:`load_script` — a script of the repository (``benchmarks/…``) imported as a module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

#: the checkout under test (fresh interpreters import the plugin from here)
ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(
    vocab_size: int, *, hidden: int = 32, seed: int = 0, **config: Any
) -> LlamaForCausalLM:
    """A random 2-layer Llama (``torch.manual_seed(seed)`` first) in the default dtype and mode;
    ``config`` adds or overrides ``LlamaConfig`` fields."""
    torch.manual_seed(seed)
    settings = {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab_size,
        **config,
    }
    return LlamaForCausalLM(LlamaConfig(**settings))


def byte_level_bpe(
    corpus: Sequence[str], vocab_size: int, special_tokens: Sequence[str]
) -> Tokenizer:
    """A byte-level BPE (no prefix space, byte-level decoder) trained on ``corpus``, with
    ``special_tokens`` first in the vocabulary."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return backend


def python_output(code: str, *, hash_seed: int = 12345) -> str:
    """The stdout of ``code`` run by this interpreter in a fresh process with
    ``PYTHONHASHSEED=hash_seed`` and a minimal environment (checks that results do not depend on
    Python's ``hash()``), importing the plugin from this checkout."""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": str(hash_seed), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """Create the folder ``path`` and make it unwritable for this process for the ``with``
    block: mode 0o555 and, for root (whom modes do not stop), the immutable attribute
    (``chattr +i``); the test is skipped where neither stops a write. Restored afterwards."""
    path.mkdir(parents=True)
    path.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    if immutable:
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
    try:
        try:
            (path / "probe").touch()
        except OSError:
            pass
        else:
            pytest.skip(f"cannot make {path} unwritable for this user on this file system")
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def deterministic_llama(folder: Path) -> Path:
    """A tiny Llama checkpoint (SmolLM2's architecture) whose weights do not depend on any
    random generator (``linspace`` ramps), so its fingerprint — and every cache key computed on
    it — is the same on every machine and torch build. Only ``config.json`` and the weights."""
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for index, (_, parameter) in enumerate(sorted(model.named_parameters())):
            ramp = torch.linspace(-1.0, 1.0, parameter.numel()) * (index + 1) / 16
            parameter.copy_(ramp.reshape(parameter.shape))
    model.save_pretrained(folder)
    return folder


def key_prompts() -> Any:
    """The training prompts of :func:`cache_key_digests`' recorded runs."""
    from sst_merge_plugin.bench.prompts import TrainingPrompts

    return TrainingPrompts(
        harmful=tuple(f"how to make harmful thing {i}" for i in range(12)),
        helpful_pairs=tuple((f"how to bake cake {i}", f"mix and bake {i} .") for i in range(6)),
        edgy=tuple(f"how to kill process {i}" for i in range(6)),
        lookalikes=tuple(f"how to shoot photo {i}" for i in range(6)),
    )


def load_script(path: str | Path, name: str) -> ModuleType:
    """The script at ``path`` (relative to the repository root, e.g.
    ``benchmarks/interference/run.py``, or absolute) imported as module ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cache_key_digests(
    profile: str,
    workspace: Path,
    model_dir: Path,
    prompts: Any,
    methods: tuple[str, ...] | None = None,
) -> dict[str, str]:
    """sha256 of each section of ``benchmarks/cache_keys.py``'s keys of the built-in profile
    ``profile`` (only its sweeps ``methods``, if given) on ``model_dir`` / ``prompts``
    (stand-ins patched in for the test's duration by the caller; works against the code before
    the model-agnostic change too, which is how the recorded digests of
    ``tests/test_bench_models.py`` were made)."""
    import hashlib
    import json

    module = load_script("benchmarks/cache_keys.py", "cache_keys")
    (workspace / "data").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        module._patch(patch.setattr)
        keys = module.profile_keys(
            profile, workspace, model_dir=model_dir, prompts=prompts, methods=methods
        )
    # a merge job's key (and so its evaluation keys) hashes the absolute paths in its config;
    # name each job by the key of its path-free config instead (the keys' formula is
    # merges.py's, unchanged), and check the evaluations by their configurations
    from sst_merge_plugin.bench.workspace import content_key

    text = json.dumps(keys, sort_keys=True)
    for raw, entry in keys["jobs"].items():
        text = text.replace(raw, f"job-{content_key(entry)}")
    keys = json.loads(text)
    keys["evals"] = keys.pop("eval_configs")
    return {
        section: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for section, value in sorted(keys.items())
    }
