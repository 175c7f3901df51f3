"""``sst-merge fisher``: collect one Fisher file from a model (+ adapter) and a data set.

Order of work: every argument, the data, the adapters and ``--targets`` are checked first (the
targets and adapter shapes against a weightless meta-device copy of the model built from its
``config.json``), then the tokenizer encodes the data; only then is the model loaded, the ``kl``
responses sampled, the statistics collected and the file written atomically. Any error is an
:class:`SSTError` (exit status 2) and leaves no file; so does Ctrl-C.

Data selection: ``--split`` takes the project-wide held-out split of the prompts
(:func:`sst_merge_plugin.data.prompts.held_out_split`, the split the evaluation holds out):
``train`` (the default) keeps the part the evaluation does not use, ``eval`` the held-out part,
``all`` everything. ``--max-examples N`` then keeps the ``N`` items with the smallest
``sha256(f"fisher/{seed}\\0{text}")``, in data order (a seeded, position-independent subset).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.fisher import KINDS, OBJECTIVES

SPLITS = ("train", "eval", "all")
DEVICES = ("cpu", "cuda")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``fisher`` sub-command's options."""
    parser.add_argument("--model", required=True, help="base model: Hugging Face folder")
    parser.add_argument("--adapter", help="PEFT LoRA adapter folder to apply before collecting")
    parser.add_argument(
        "--data",
        required=True,
        help="prompt set (advbench, harmbench, benign-edgy) or prompt file (.txt/.jsonl/.json/"
        ".csv); for --objective lm a .jsonl/.json/.csv of prompt+response records",
    )
    parser.add_argument("--field", help="prompt field of JSON/CSV records (lm: default 'prompt')")
    parser.add_argument(
        "--response-field", default="response", help="lm: response field (default: response)"
    )
    parser.add_argument("--objective", required=True, choices=OBJECTIVES)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument(
        "--restrict-to",
        metavar="ADAPTER",
        help="LoRA adapter folder whose column/row spaces restrict a --kind lora Fisher",
    )
    parser.add_argument(
        "--targets",
        help="Linear layers: comma-separated names (q_proj,v_proj) or a regex over weight "
        "names; default: every Linear inside the decoder blocks (not lm_head)",
    )
    parser.add_argument("--out", required=True, help="Fisher file to write (.safetensors)")
    parser.add_argument("--max-examples", type=int, help="use at most N examples (seeded subset)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per example")
    parser.add_argument(
        "--response-tokens", type=int, default=64, help="kl: tokens sampled per prompt"
    )
    parser.add_argument("--seed", type=int, default=0, help="refusal targets, kl sampling, subset")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--split", choices=SPLITS, default="train", help="default: train")


def _check_numbers(args: argparse.Namespace) -> None:
    for option, value, minimum in (
        ("--batch-size", args.batch_size, 1),
        ("--max-length", args.max_length, 2),
        ("--response-tokens", args.response_tokens, 1),
        ("--max-examples", args.max_examples, 1),
    ):
        if value is not None and value < minimum:
            raise SSTError(f"{option} must be >= {minimum}, got {value}")
    if args.kind == "lora" and not args.restrict_to:
        raise SSTError("--kind lora needs --restrict-to ADAPTER (the subspace to restrict to)")
    if args.restrict_to and args.kind != "lora":
        raise SSTError("--restrict-to only applies to --kind lora")
    if args.objective != "lm" and args.response_field != "response":
        raise SSTError("--response-field only applies to --objective lm")
    if Path(args.out).is_dir():
        raise SSTError(f"--out {args.out!r} is a directory; give a file name")


def _split_part(prompts: Sequence[str], split: str) -> set[str]:
    from sst_merge_plugin.data.prompts import held_out_split

    train, evaluation = held_out_split(list(prompts))
    return set(train.prompts if split == "train" else evaluation.prompts)


def load_data(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The ``prompts=`` or ``completions=`` argument of ``prepare_data``, and its metadata."""
    from sst_merge_plugin.data.prompts import load_prompts, seeded_subset

    if args.objective == "lm":
        from sst_merge_plugin.fisher.objectives import load_completions

        items = load_completions(args.data, args.field or "prompt", args.response_field)
        prompts, name = [prompt for prompt, _ in items], Path(args.data).name
        texts = [f"{prompt}\0{response}" for prompt, response in items]
    else:
        prompt_set = load_prompts(args.data, field=args.field)
        items = prompts = list(prompt_set.prompts)
        name, texts = prompt_set.name, prompts
    if args.split != "all":
        part = _split_part(prompts, args.split)
        kept = [index for index, prompt in enumerate(prompts) if prompt in part]
        items, texts = [items[i] for i in kept], [texts[i] for i in kept]
    items = seeded_subset(items, texts, args.max_examples, f"fisher/{args.seed}")
    if not items:
        raise SSTError(f"no examples left in {args.data!r} after --split {args.split}")
    info = {"dataset": str(args.data), "dataset_name": name, "split": args.split}
    if args.max_examples is not None:
        info["max_examples"] = str(args.max_examples)
    key = "completions" if args.objective == "lm" else "prompts"
    return {key: items}, info


def _meta_model(model_dir: Path):
    """The model's module structure on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise SSTError(f"cannot read the model config in {str(model_dir)!r}: {error}") from None
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as error:
        raise SSTError(f"{str(model_dir)!r} is not a causal language model: {error}") from None


def run(args: argparse.Namespace) -> int:
    """Validate everything, collect, write the file atomically (see module doc)."""
    _check_numbers(args)
    import torch

    from sst_merge_plugin.fisher.adapter import (
        adapter_subspaces,
        check_adapter_matches,
        read_lora_adapter,
    )
    from sst_merge_plugin.fisher.collect import collect_fisher, resolve_layers
    from sst_merge_plugin.fisher.fingerprint import checkpoint_files, checkpoint_fingerprint
    from sst_merge_plugin.fisher.objectives import prepare_data
    from sst_merge_plugin.fisher.targets import layer_shape, linear_candidates

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SSTError("--device cuda was requested but no CUDA device is available")
    model_dir = Path(args.model).expanduser()
    checkpoint_files(model_dir)
    data_arguments, extra = load_data(args)
    adapter = read_lora_adapter(args.adapter) if args.adapter else None
    restrict = read_lora_adapter(args.restrict_to) if args.restrict_to else None
    meta_model = _meta_model(model_dir)
    shapes = {name: layer_shape(module) for name, module in linear_candidates(meta_model).items()}
    for lora_adapter in (adapter, restrict):
        if lora_adapter is not None:
            check_adapter_matches(lora_adapter, shapes, str(model_dir))
    resolve_layers(
        meta_model, args.kind, args.targets, adapter_subspaces(restrict) if restrict else None
    )
    del meta_model

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise SSTError(f"cannot load a tokenizer from {str(model_dir)!r}: {error}") from None
    data = prepare_data(
        tokenizer,
        objective=args.objective,
        seed=args.seed,
        max_length=args.max_length,
        response_tokens=args.response_tokens,
        **data_arguments,
    )
    fingerprint = checkpoint_fingerprint(model_dir)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter.path))
        extra.update(adapter=str(adapter.path), adapter_sha256=adapter.sha256)
    model.to(args.device)
    extra.update(base_model=str(model_dir), device=args.device)
    result = collect_fisher(
        model,
        tokenizer,
        data,
        kind=args.kind,
        targets=args.targets,
        restrict_to=restrict,
        batch_size=args.batch_size,
        model_fingerprint=fingerprint,
        extra=extra,
        progress=True,
    )
    result.write(args.out)
    metadata = result.metadata
    print(
        f"wrote {args.out}: {metadata.kind} Fisher of {len(result.fishers)} weights, objective "
        f"{metadata.objective}, {metadata.n_examples} examples, {metadata.n_tokens} tokens, "
        f"{Path(args.out).stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - started:.1f} s"
    )
    return 0
