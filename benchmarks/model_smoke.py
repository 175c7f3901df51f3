"""A few-minute smoke run of the pipeline's model-dependent paths on the real registered models.

For each model (default: every registered one, SmolLM2 first):

1. **decoding speed** — the same 8 harmful prompts (HarmBench validation), chat-templated and
   left-padded as the evaluation does, decoded greedily for exactly ``--tokens`` new tokens
   (``min_new_tokens`` = ``max_new_tokens``): seconds per decoding step of the batch and per
   generated token;
2. **evaluation** — :func:`~sst_merge_plugin.evaluation.suite.evaluate_model` on 8 harmful
   (HarmBench validation), 8 benign (over-refusal validation) prompts and 8 items of each
   ``--skills`` skill (validation pool), 32 new tokens: refusal, over-refusal, utility, time;
3. **own refusals** (``--own-refusals N``) — the self-distillation stage
   (:class:`~sst_merge_plugin.bench.refusals.OwnRefusals`) on the first N harmful training
   prompts: how many the model refuses, and its refusals;
4. **Fisher** (``--fisher``) — a ``lora`` Fisher of objective ``refusal`` with those own
   refusals as targets (``target_field``), restricted to a seeded random rank-8 LoRA on every
   block projection (the pipeline's training targets for the model), through the Fisher cache.

Everything runs in ``--workdir`` (a scratch folder), one torch thread by default.

    python benchmarks/model_smoke.py --workdir /tmp/smoke --out smoke.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def decoding_speed(model: Any, tokenizer: Any, prompts: list[str], tokens: int) -> dict:
    """Seconds per batch step and per generated token for a forced-length greedy decode."""
    import torch

    from sst_merge_plugin.data.chat import encode_chat, pad_batch
    from sst_merge_plugin.evaluation.generate import UNLIMITED

    encoded = [encode_chat(tokenizer, p, None, max_length=UNLIMITED).input_ids for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, mask = pad_batch(encoded, pad, "left")
    with torch.inference_mode():
        started = time.perf_counter()
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        seconds = time.perf_counter() - started
    generated = (output.shape[1] - input_ids.shape[1]) * len(prompts)
    return {
        "batch": len(prompts),
        "prompt_tokens_max": int(input_ids.shape[1]),
        "new_tokens_per_row": int(output.shape[1] - input_ids.shape[1]),
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / tokens, 4),
        "ms_per_generated_token": round(1000 * seconds / generated, 2),
    }


def smoke(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sst_merge_plugin.bench.scoring import load_model
    from sst_merge_plugin.bench.training import model_projections
    from sst_merge_plugin.data.models import model_dir
    from sst_merge_plugin.evaluation.suite import EvalConfig, evaluate_model, prepare_eval_data

    folder = model_dir(name)
    report: dict[str, Any] = {"model": name, "folder": str(folder)}
    started = time.perf_counter()
    model, tokenizer = load_model(folder, "cpu")
    report["load_seconds"] = round(time.perf_counter() - started, 1)
    report["block_projections"] = list(model_projections(folder))
    from sst_merge_plugin.data.chat import prompt_text

    report["chat_format"] = prompt_text(tokenizer, "{prompt}")
    config = EvalConfig(
        harmful="harmbench-val",
        benign="overrefusal-val",
        utility=tuple(args.skills),
        n_harmful=8,
        n_benign=8,
        n_utility=8,
        max_new_tokens=32,
        batch_size=8,
        skill_pool="validation",
    )
    data = prepare_eval_data(config)
    report["decoding"] = decoding_speed(model, tokenizer, list(data.harmful.prompts), args.tokens)
    started = time.perf_counter()
    metrics = evaluate_model(model, tokenizer, config, progress=False, data=data)
    report["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    report["evaluation"] = {
        key: metrics[key] for key in ("harmful_refusal", "benign_over_refusal", "utility")
    }
    report["seconds_by_part"] = metrics["seconds_by_part"]
    report["harmful_responses"] = [item["response"] for item in metrics["items"]["harmful"]]
    report["benign_responses"] = [item["response"] for item in metrics["items"]["benign"]]
    report["utility_examples"] = metrics["examples"]["utility"]
    del model
    if args.own_refusals:
        report.update(own_refusals(name, folder, args, workdir))
    return report


def own_refusals(name: str, folder: Path, args: argparse.Namespace, workdir: Path) -> dict:
    from sst_merge_plugin.bench.profile import SelfRefusals
    from sst_merge_plugin.bench.prompts import TrainingPrompts
    from sst_merge_plugin.bench.refusals import OwnRefusals
    from sst_merge_plugin.bench.workspace import Workspace

    workspace = Workspace(workdir / name)
    prompts = TrainingPrompts.from_assets().harmful[: args.own_refusals]
    stage = OwnRefusals(
        workspace, folder, SelfRefusals(max_new_tokens=48), prompts, device="cpu", progress=False
    )
    started = time.perf_counter()
    records = stage.records()
    out: dict[str, Any] = {
        "own_refusals_seconds": round(time.perf_counter() - started, 1),
        "own_refusals": stage.summary(),
        "own_refusal_records": records,
    }
    if args.fisher and not stage.pool():
        out["fisher"] = "skipped: the model refused none of the prompts (no own refusals)"
    elif args.fisher:
        out["fisher"] = refusal_fisher(folder, workspace, stage, prompts)
    return out


def refusal_fisher(folder: Path, workspace: Any, stage: Any, prompts: Any) -> dict[str, Any]:
    """A lora refusal Fisher on the own refusals, restricted to a seeded random LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from sst_merge_plugin.bench.training import model_projections
    from sst_merge_plugin.fisher.cache import cached_fisher_file
    from sst_merge_plugin.fisher.request import FisherRequest

    adapter = workspace / "random-lora"
    if not (adapter / "adapter_model.safetensors").is_file():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        lora = LoraConfig(
            r=8, lora_alpha=16, target_modules=list(model_projections(folder)),
            init_lora_weights=False,
        )  # fmt: skip
        get_peft_model(base, lora).save_pretrained(str(adapter))
        del base
    targets = stage.targets(list(prompts))
    records = [{"prompt": p, "refusal": t} for p, t in zip(prompts, targets, strict=True) if t]
    data = workspace.prompt_file("harm-own", records)
    request = FisherRequest.from_options(
        str(folder), str(data), "refusal", "lora", restrict_to=(str(adapter),),
        options={"split": "all", "field": "prompt", "target_field": "refusal",
                 "batch_size": 4, "max_length": 160},
    )  # fmt: skip
    started = time.perf_counter()
    path = cached_fisher_file(request, workspace / "fishers", "harm")
    seconds = time.perf_counter() - started
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        n_weights = len({key.split("::")[0] for key in handle.keys()})  # noqa: SIM118
    return {
        "file": path.name,
        "seconds": round(seconds, 1),
        "weights": n_weights,
        "n_examples": metadata["n_examples"],
        "n_loss_tokens": metadata["n_loss_tokens"],
        "refusal_targets": metadata.get("refusal_targets"),
        "mib": round(path.stat().st_size / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from sst_merge_plugin.data.models import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--workdir", required=True, help="scratch folder")
    parser.add_argument("--out", required=True, help="JSON report")
    parser.add_argument("--tokens", type=int, default=32, help="decoding-speed tokens per row")
    parser.add_argument("--skills", nargs="+", default=["uppercase", "python_eval"])
    parser.add_argument("--own-refusals", type=int, default=8, help="harmful prompts (0: skip)")
    parser.add_argument("--fisher", action="store_true", help="collect the lora refusal Fisher")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir).resolve()
    reports = []
    for name in args.models:
        reports.append(smoke(name, args, workdir))
        Path(args.out).write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
        decoding = reports[-1]["decoding"]
        print(
            f"{name}: {decoding['ms_per_generated_token']} ms/token "
            f"({decoding['seconds_per_step']} s per step of {decoding['batch']}), "
            f"evaluation {reports[-1]['evaluation_seconds']} s {reports[-1]['evaluation']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
