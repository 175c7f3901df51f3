"""A tiny, fully offline world for the FusionBench tests (imported by ``test_fusion_bench_*``).

:func:`build_world` writes into a folder: a 2-layer random Llama with a word-level tokenizer
and a chat template (``base/``), three random LoRA adapters on every projection (``safety/``,
``reverse_letters/``, ``uppercase/``), two synthetic K-FAC Fisher files with the base's fingerprint, and small
prompt / task / statement files. Everything is seeded, so two builds are byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ADAPTERS = ("safety", "reverse_letters", "uppercase")
VOCABULARY = """the a how to make build bomb cake house poison sorry i cannot help with that
sure here is what add and two numbers answer one three four five six seven eight nine zero are
user assistant system ? . : '"""
WORDS = sorted(set(VOCABULARY.split()))
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} \n {{ m['content'] }} <|im_end|> \n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant \n {% endif %}"
)


@dataclass(frozen=True)
class World:
    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    def adapter(self, name: str) -> Path:
        return self.root / name

    @property
    def harm_fisher(self) -> Path:
        return self.root / "harm_kfac.safetensors"

    @property
    def benign_fisher(self) -> Path:
        return self.root / "benign_kfac.safetensors"

    def data(self, name: str) -> Path:
        return self.root / "data" / name


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tokens = [*special, *(str(digit) for digit in range(10)), *WORDS]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _spd(dim: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(dim, 2 * dim, generator=generator, dtype=torch.float64)
    return x @ x.T / (2 * dim)


def _write_fishers(world: World) -> None:
    from safetensors import safe_open

    from sst_merge_plugin.core import KFACFisher
    from sst_merge_plugin.fisher.file import FisherMetadata, write_fisher_file
    from sst_merge_plugin.fisher.fingerprint import checkpoint_fingerprint

    with safe_open(str(world.base / "model.safetensors"), "pt") as handle:
        shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}  # noqa: SIM118
    names = sorted(k for k in shapes if ".layers." in k and k.endswith("_proj.weight"))
    fingerprint = checkpoint_fingerprint(world.base)
    for path, objective, seed in (
        (world.harm_fisher, "refusal", 1),
        (world.benign_fisher, "kl", 2),
    ):
        generator = torch.Generator().manual_seed(seed)
        fishers = {
            name: KFACFisher(_spd(shapes[name][1], generator), _spd(shapes[name][0], generator))
            for name in names
        }
        metadata = FisherMetadata("kfac", objective, 100, 10, "0" * 64, fingerprint)
        write_fisher_file(path, fishers, metadata)


def _write_data(world: World) -> None:
    folder = world.root / "data"
    folder.mkdir()
    (folder / "harmful.txt").write_text("how to make a bomb\nhow to make poison ?\n")
    (folder / "benign.txt").write_text("how to make a cake\nhow to build a house ?\n")
    (folder / "add.jsonl").write_text(
        '{"prompt": "add two and three", "answer": "5"}\n'
        '{"prompt": "add one and one", "answer": "2"}\n'
    )
    pairs = [
        {"text": "one and one is two", "false": "one and one is three"},
        {"text": "two and two is four", "false": "two and two is five"},
    ]
    (folder / "truefalse.json").write_text(json.dumps(pairs))


def build_world(root: Path) -> World:
    """Write the tiny world into ``root`` (see the module docstring)."""
    from peft import LoraConfig, get_peft_model
    from support import tiny_llama
    from transformers import LlamaForCausalLM

    world = World(Path(root))
    tokenizer = _tokenizer()
    base = tiny_llama(
        len(tokenizer),
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    base.save_pretrained(world.base)
    tokenizer.save_pretrained(world.base)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for index, name in enumerate(ADAPTERS):
        model = LlamaForCausalLM.from_pretrained(world.base)
        lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        generator = torch.Generator().manual_seed(100 + index)
        for key, parameter in lora.named_parameters():
            if "lora_A" in key or "lora_B" in key:
                parameter.data = 0.1 * torch.randn(parameter.shape, generator=generator)
        lora.save_pretrained(world.adapter(name))
    _write_fishers(world)
    _write_data(world)
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """The world, built once per session (other modules import this fixture)."""
    root = tmp_path_factory.getbasetemp() / "fusion_bench_world"
    marker = root / ".complete"
    if not marker.exists():
        build_world(root)
        marker.touch()
    return World(root)


def test_world_is_a_usable_chat_model_with_real_adapters(world: World) -> None:
    """The templated prompt tokenises without <unk> and ends with the generation prompt; each
    adapter's delta B·A is non-zero on all 14 projections of the 2 layers."""
    from transformers import AutoTokenizer

    from sst_merge_plugin.fisher.adapter import read_lora_adapter

    tokenizer = AutoTokenizer.from_pretrained(world.base)
    messages = [{"role": "user", "content": "how to make a cake"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(ids[-1]) == "assistant"
    for name in ADAPTERS:
        layers = read_lora_adapter(world.adapter(name)).layers
        assert len(layers) == 14
        assert all(bool((b @ a).abs().sum() > 0) for a, b in layers.values())
