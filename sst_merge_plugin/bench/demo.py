"""``sst-merge demo`` — the safety–utility benchmark on a small chat model, end to end.

The model is a registered one (``--model``, :data:`sst_merge_plugin.data.models.MODELS`;
default SmolLM2-135M-Instruct); without ``--profile`` the model's own profile runs
(:func:`~sst_merge_plugin.bench.profile.profile_for`: ``quick`` for SmolLM2, ``qwen-quick``
for Qwen2.5-Coder-0.5B-Instruct; ``benchmarks/safety_utility/run.py``: ``full`` / ``qwen``).

From an empty cache it fetches the model and prompt sets, trains a safety LoRA and two utility
LoRAs, collects the Fisher files, and runs the benchmark protocol (``docs/design.md`` §7) in
miniature: every method's knob grid is merged through mergekit and scored on the validation
split, the rule picks each method's operating point, and the chosen points are scored on the
disjoint test split (harmful refusal on HarmBench, over-refusal on benign look-alikes, skill
exact match; 95 % intervals). It prints the tables and writes ``results.json``, ``results.md``,
``pareto.png``, ``sweeps.png`` and the merge inputs (``inputs/adapters/``,
``inputs/fishers/<kind>/``, ready for ``configs/mergekit``) into ``--out``. Every stage is
cached in the workspace, so a second run (or a run after Ctrl-C) only redoes what is missing.

The default ``quick`` profile takes minutes on 2 CPU cores; ``--profile full`` is the complete
benchmark of ``benchmarks/safety_utility``. The default workspace is ``<asset cache>/bench/
<profile name>`` (a profile run on another model than its own is named ``<profile>-<model>``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sst_merge_plugin.core.errors import SSTError

#: the configs/mergekit placeholder of each Fisher kind's exported folder (``inputs/fishers/<kind>``)
CONFIG_FISHER_FOLDERS = {"lora": "FISHERS", "kfac": "KFAC_FISHERS"}


def add_arguments(parser: argparse.ArgumentParser, full: bool = False) -> None:
    """The demo's options; ``full``: for the benchmark script, whose default is the model's
    full profile."""
    from sst_merge_plugin.bench.profile import PROFILES
    from sst_merge_plugin.data.models import DEFAULT_MODEL, MODELS

    parser.add_argument("--out", default="sst-merge-demo", help="folder for the results")
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        help=f"a registered model (data/models.py; default: the profile's own, without "
        f"--profile {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--profile",
        help=f"{', '.join(PROFILES)} (default: the model's own {'full' if full else 'quick'} "
        f"profile — {'full' if full else 'quick'} for {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--methods", nargs="+", help="run only these sweeps of the profile (default: all)"
    )
    parser.add_argument(
        "--workspace", help="cache folder of the stages (default: <asset cache>/bench/<profile>)"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="also bootstrap these methods' test outcomes minus every other method's (default: "
        "the headline's only)",
    )
    parser.add_argument("--cache-dir", help="asset cache (default: $SST_MERGE_CACHE or ~/.cache)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 on a busy machine)"
    )
    parser.add_argument("--keep-models", action="store_true", help="keep the merged model folders")
    parser.add_argument(
        "--inputs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the merge inputs (adapters, Fisher files) to OUT/inputs (demo default: yes)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def judge_summary(cache_dir: str | None) -> dict[str, float | int]:
    """The refusal judge's quality on pyrit's human-labelled responses (printed with reports)."""
    from sst_merge_plugin.data.prompts import load_labelled_refusals
    from sst_merge_plugin.evaluation.judge import judge_quality

    quality = judge_quality(load_labelled_refusals(cache_dir))
    return {key: getattr(quality, key) for key in ("precision", "recall", "f1", "n")}


def chat_format(model_dir: Path) -> str:
    """How the model's chat template renders a user turn ``{prompt}`` with the generation
    prompt, as every stage encodes it (no system message passed: a template's default system
    prompt is part of the format)."""
    from transformers import AutoTokenizer

    from sst_merge_plugin.data.chat import prompt_text

    return prompt_text(AutoTokenizer.from_pretrained(model_dir), "{prompt}")


def run_profile(args: argparse.Namespace, title: str, *, full: bool = False) -> int:
    """Run the profile ``args.profile`` / ``args.model`` select (``full``: the full benchmark's
    default; shared by ``sst-merge demo`` and ``benchmarks/safety_utility``)."""
    from sst_merge_plugin.bench.pipeline import Pipeline
    from sst_merge_plugin.bench.profile import profile_for
    from sst_merge_plugin.bench.report import check_comparisons, write_outputs
    from sst_merge_plugin.data.assets import cache_root

    profile = profile_for(args.profile, args.model, full=full)
    if args.methods:
        profile = profile.with_sweeps(tuple(args.methods))
    check_comparisons(args.compare, [sweep.label for sweep in profile.sweeps])  # before running
    if args.threads is not None:
        if args.threads < 1:
            raise SSTError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SSTError(f"--device {args.device}: CUDA is not available on this machine")
    workspace = args.workspace or cache_root(args.cache_dir) / "bench" / profile.name
    started = time.perf_counter()
    judge = judge_summary(args.cache_dir)
    pipeline = Pipeline(
        profile,
        workspace,
        cache_dir=args.cache_dir,
        keep_models=args.keep_models,
        progress=not args.no_progress,
        device=args.device,
    )
    run = pipeline.run()
    paths = write_outputs(run, args.out, f"{title} ({profile.name} profile)", args.compare)
    inputs = pipeline.export_inputs(args.out) if args.inputs else None
    meta = {
        "profile": profile.name,
        "model": pipeline.model,
        "workspace": str(workspace),
        "base_model": str(pipeline.model_dir),
        "chat_format": chat_format(pipeline.model_dir),
        "own_refusals": None if pipeline.refusals is None else pipeline.refusals.summary(),
        "inputs": None if inputs is None else str(inputs),
        "judge_on_pyrit_labels": judge,
        "seconds": round(time.perf_counter() - started, 1),
    }
    from sst_merge_plugin.atomic import write_text

    write_text(Path(args.out) / "run.json", json.dumps(meta, indent=2) + "\n")
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(
        f"refusal judge on pyrit's {judge['n']} labelled responses: precision "
        f"{judge['precision']:.3f}, recall {judge['recall']:.3f}"
    )
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {meta['seconds']:.0f} s")
    if inputs is not None:
        fishers = [
            f"{variable}={inputs / 'fishers' / kind}"
            for kind, variable in CONFIG_FISHER_FOLDERS.items()
            if kind in profile.fisher_kinds
        ]
        print(
            "merge inputs for configs/mergekit:",
            f"BASE_MODEL={pipeline.model_dir}",
            f"ADAPTERS={inputs / 'adapters'}",
            *fishers,
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return run_profile(args, "SST-Merge safety–utility demo")
