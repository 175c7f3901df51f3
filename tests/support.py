"""Builders shared by test modules of different areas (no tests here; pytest puts ``tests/`` on
``sys.path``, so modules import them as ``from support import ...``).

* :func:`tiny_llama` — a seeded random 2-layer Llama (4 heads, 2 KV heads, FFN ``2 × hidden``);
  each caller passes its vocabulary and any other ``LlamaConfig`` fields.
* :func:`byte_level_bpe` — a byte-level BPE tokenizer trained on a small corpus.
* :func:`python_output` — what a snippet prints in a fresh interpreter with another hash seed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM


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


def python_output(code: str) -> str:
    """The stdout of ``code`` run by this interpreter in a fresh process with
    ``PYTHONHASHSEED=12345`` and a minimal environment (checks that results do not depend on
    Python's ``hash()``)."""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout
