"""Digests of the SST merges of one set of inputs on both hosts — a bit-identity check.

Merges the exported benchmark inputs (``sst-merge demo --out DIR`` writes them to
``DIR/inputs``: ``adapters/{safety,<skills>}`` and ``fishers/<kind>/{harm,benign}.safetensors``)
with every SST method that needs no other input — ``sst_merge`` (soft and hard selection),
``sst_single_fisher``, ``sst_safe_lora`` (both gates) — through

* mergekit: the unmodified ``mergekit-yaml`` console script in a fresh process, and
* FusionBench: ``SSTMergeAlgorithm(...).run(CausalLMPool(...))`` in this process,

and writes ``{host: {config: {tensor: sha256 of its bytes}}}`` as JSON. Run it before and after
a change (e.g. with ``PYTHONPATH`` pointing at a checkout of the previous commit) and compare
the two files: equal digests mean bit-identical weights. The script only uses interfaces both
versions share (the console script, the algorithm's keyword arguments, the pool loader).

    python benchmarks/merge_digests.py --inputs demo/inputs --base $BASE_MODEL --out after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

#: the configurations merged: name → (method, shared parameters)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "sst_soft": ("sst_merge", {"select": "soft", "rho": 1.0, "scale": 2.0}),
    "sst_hard": ("sst_merge", {"select": "ratio", "ratio": 1.0, "scale": 2.0}),
    "single_fisher": ("sst_single_fisher", {"select": "energy", "energy": 0.9, "scale": 2.0}),
    "safe_lora": ("sst_safe_lora", {"gate": "project", "threshold": 0.5, "scale": 2.0}),
    "safemerge": ("sst_safe_lora", {"gate": "merge", "threshold": 0.5, "scale": 2.0}),
}
SAFETY = "safety"


def tensor_digests(state: dict[str, Any]) -> dict[str, str]:
    """sha256 of each tensor's raw bytes (dtype and shape included), by name."""
    out = {}
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def fisher_parameters(method: str, fishers: Path) -> dict[str, str]:
    if method == "sst_safe_lora":
        return {}
    files = {"harm_fisher": str(fishers / "harm.safetensors")}
    if method == "sst_merge":
        files["benign_fisher"] = str(fishers / "benign.safetensors")
    return files


def mergekit_merge(
    method: str, shared: dict, base: Path, adapters: dict[str, Path], out: Path, cache: Path
) -> dict[str, str]:
    """``mergekit-yaml`` on the configuration; digests of the written tensors."""
    from safetensors.torch import load_file

    config = {
        "merge_method": method,
        "base_model": str(base),
        "dtype": "float32",
        "parameters": shared,
        "models": [
            {
                "model": f"{base}+{folder}",
                "parameters": {"weight": 1.0, **({"role": "safety"} if name == SAFETY else {})},
            }
            for name, folder in adapters.items()
        ],
    }
    config_file = out.with_suffix(".yml")
    config_file.write_text(yaml.safe_dump(config))
    command = ["mergekit-yaml", str(config_file), str(out), "--lora-merge-cache", str(cache)]
    subprocess.run([*command, "--random-seed", "0", "--quiet"], check=True)
    state: dict[str, Any] = {}
    for shard in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return tensor_digests(state)


def fusion_bench_merge(
    method: str, shared: dict, base: Path, adapters: dict[str, Path]
) -> dict[str, str]:
    """``SSTMergeAlgorithm`` on a ``CausalLMPool`` of the adapters; digests of the state dict."""
    from fusion_bench.modelpool import CausalLMPool

    from sst_merge_plugin.fusion_bench.algorithm import SSTMergeAlgorithm

    loader = "sst_merge_plugin.fusion_bench.loaders.load_lora_causal_lm"
    models: dict[str, Any] = {"_pretrained_": str(base)}
    for name, folder in adapters.items():
        models[name] = {
            "_target_": loader,
            "pretrained_model_name_or_path": str(base),
            "adapter_path": str(folder),
        }
    pool = CausalLMPool(models=models, tokenizer=str(base), model_kwargs={"torch_dtype": "float32"})
    torch.manual_seed(0)
    merged = SSTMergeAlgorithm(merge_method=method, safety_model=SAFETY, **shared).run(pool)
    return tensor_digests(merged.state_dict())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, help="exported inputs folder (DIR/inputs)")
    parser.add_argument("--base", required=True, help="base model folder")
    parser.add_argument("--kind", default="lora", help="Fisher kind under inputs/fishers/")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    inputs, base = Path(args.inputs), Path(args.base)
    folders = sorted((inputs / "adapters").iterdir())
    adapters = {p.name: p for p in sorted(folders, key=lambda p: (p.name != SAFETY, p.name))}
    fishers = inputs / "fishers" / args.kind
    digests: dict[str, dict[str, dict[str, str]]] = {"mergekit": {}, "fusion_bench": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs:
            method, parameters = CONFIGS[name]
            shared = {**parameters, **fisher_parameters(method, fishers)}
            print(f"{name}: mergekit", file=sys.stderr, flush=True)
            digests["mergekit"][name] = mergekit_merge(
                method, shared, base, adapters, Path(scratch, name), Path(scratch, "cache")
            )
            print(f"{name}: fusion_bench", file=sys.stderr, flush=True)
            digests["fusion_bench"][name] = fusion_bench_merge(method, shared, base, adapters)
    Path(args.out).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    same = all(
        digests["fusion_bench"][n][tensor] == digest
        for n in args.configs
        for tensor, digest in digests["mergekit"][n].items()
    )
    print(f"wrote {args.out}; every tensor mergekit writes equals FusionBench's: {same}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
