"""Tiny random Llama models, tokenizer and LoRA adapters shared by the ``test_fisher_*`` tests.

No tests here: the other modules import these builders (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from support import byte_level_bpe
from support import tiny_llama as random_llama
from transformers import PreTrainedTokenizerFast

VOCAB = 300
CORPUS = [
    "User: How do I bake bread at home?\nAssistant: Mix flour, water, salt and yeast.",
    "User: Explain how to pick a lock.\nAssistant: I'm sorry, but I can't help with that.",
    "Write a poem about the sea. Describe a plan to stay healthy. What is the capital of France?",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (``VOCAB`` tokens, ``<pad>``=0, ``<eos>``=1), no chat template."""
    tokenizer = byte_level_bpe(CORPUS, VOCAB, ["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def tiny_llama(seed: int = 0, hidden: int = 32, dtype: torch.dtype = torch.float32):
    """A random 2-layer Llama (4 heads, 2 KV heads) with ``VOCAB`` tokens, in eval mode."""
    model = random_llama(
        VOCAB,
        hidden=hidden,
        seed=seed,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    return model.to(dtype).eval()


def save_tiny_model(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """Save a :func:`tiny_llama` and :func:`tiny_tokenizer` as a Hugging Face folder."""
    tiny_llama(seed, hidden).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def lora_model(model, targets=("q_proj", "down_proj"), rank: int = 3, seed: int = 1) -> PeftModel:
    """``model`` wrapped (in place) by a PEFT LoRA adapter with random, non-zero ``A``, ``B``."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(targets), init_lora_weights=False
    )
    return get_peft_model(model, config).eval()


def save_tiny_adapter(folder: Path, model, **options) -> Path:
    """Save a :func:`lora_model` adapter of (a copy of) ``model`` to ``folder``."""
    lora_model(copy.deepcopy(model), **options).save_pretrained(folder)
    return folder
