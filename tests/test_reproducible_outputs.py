"""Adapter folders the plugin writes are byte-reproducible across interpreters.

PEFT keeps ``target_modules`` as a set and writes ``adapter_config.json`` in ``hash()`` order, so
the same adapter written by two processes (different ``PYTHONHASHSEED``) differed. Each test
writes one folder twice, in fresh interpreters with different hash seeds, and compares every
file byte for byte; PEFT must still read the config back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import python_output
from test_fisher_support import save_tiny_model

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def twice(code: str, outs: list[Path]) -> list[dict[str, bytes]]:
    """Run ``code`` once per output folder (``OUT`` in it: the folder), with hash seeds 1, 2, ..."""
    for seed, out in enumerate(outs, start=1):
        python_output(code.replace("OUT", repr(str(out))), hash_seed=seed)
    return [folder_bytes(out) for out in outs]


@pytest.mark.slow
def test_a_trained_adapter_folder_is_byte_reproducible(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    examples = [(f"Add {i} and 2.", f"The sum is {i + 2}.") for i in range(4)]
    code = (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from sst_merge_plugin.bench.training import LoRATrainingConfig, train_lora_adapter\n"
        f"config = LoRATrainingConfig(rank=2, steps=2, batch_size=2, warmup_steps=1, "
        f"max_length=64, target_modules={MODULES!r})\n"
        f"train_lora_adapter({str(model_dir)!r}, {examples!r}, OUT, config, progress=False)\n"
    )
    first, second = twice(code, [tmp_path / "one", tmp_path / "two"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(first)
    assert first == second
    config = json.loads(first["adapter_config.json"])
    assert config["target_modules"] == sorted(MODULES)

    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "one")).target_modules == set(MODULES)


@pytest.mark.slow
def test_the_merge_s_adapter_folder_is_byte_reproducible(tmp_path):
    """``write_adapter``'s ``sst_adapter/`` (:func:`~sst_merge_plugin.method.adapter.
    write_peft_adapter`)."""
    names = [f"model.layers.{layer}.self_attn.{m}.weight" for layer in (0, 1) for m in MODULES]
    code = (
        "import torch\n"
        "from sst_merge_plugin.method.adapter import write_peft_adapter\n"
        "g = torch.Generator().manual_seed(0)\n"
        f"factors = {{name: (torch.randn(8, 2, generator=g), torch.randn(2, 8, generator=g)) "
        f"for name in {names!r}}}\n"
        "write_peft_adapter(OUT, factors, '/models/base')\n"
    )
    first, second = twice(code, [tmp_path / "one", tmp_path / "two"])
    assert first == second
    config = json.loads(first["adapter_config.json"])
    assert config["target_modules"] == sorted(name.removesuffix(".weight") for name in names)
