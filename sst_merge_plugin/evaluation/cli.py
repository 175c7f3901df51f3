"""``sst-merge evaluate``: evaluate one model (optionally with a LoRA adapter) on the safety–utility
suite, print a summary table and write the full result as JSON (and a Markdown table).

All names, files and fields are checked (:func:`~sst_merge_plugin.evaluation.suite.
prepare_eval_data`, model/adapter folders, output paths) before torch or the model is loaded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.tasks import SKILLS

ADAPTER_CONFIG = "adapter_config.json"
PARTS = ("harmful", "benign", "utility", "truefalse")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``evaluate`` options."""
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--adapter", help="PEFT (LoRA) adapter folder, merged into the model")
    parser.add_argument(
        "--harmful", required=True, help="harmful prompt set: advbench, harmbench or a file"
    )
    parser.add_argument("--harmful-field", help="prompt field of a JSON/JSONL/CSV harmful file")
    parser.add_argument(
        "--benign", required=True, help="benign (over-refusal) prompt set: benign-edgy or a file"
    )
    parser.add_argument("--benign-field", help="prompt field of a JSON/JSONL/CSV benign file")
    parser.add_argument(
        "--utility",
        nargs="+",
        default=[],
        metavar="SKILL|FILE",
        help=f"utility skills ({', '.join(SKILLS)}) and/or JSONL prompt/answer files",
    )
    parser.add_argument("--truefalse", help="true/false statement-pair set name or JSON file")
    parser.add_argument("--n", type=int, default=32, help="items per set (default 32)")
    for part in PARTS:
        what = "items per skill/file" if part == "utility" else "items"
        parser.add_argument(f"--n-{part}", type=int, help=f"{part} {what} (default: --n)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="default 48")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument("--seed", type=int, default=0, help="subset selection seed (default 0)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)",
    )
    parser.add_argument("--json", required=True, type=Path, help="output JSON file")
    parser.add_argument("--markdown", type=Path, help="output Markdown summary table")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _check_inputs(args: argparse.Namespace) -> None:
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise SSTError(
            f"--model {str(model)!r} is not a Hugging Face model folder (no config.json)"
        )
    if args.adapter is not None and not (Path(args.adapter) / ADAPTER_CONFIG).is_file():
        raise SSTError(
            f"--adapter {args.adapter!r} is not a PEFT adapter folder (no {ADAPTER_CONFIG})"
        )
    if args.threads is not None and args.threads < 1:
        raise SSTError(f"--threads must be >= 1, got {args.threads}")
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None and path.is_dir():
            raise SSTError(f"{option} {str(path)!r} is a directory, expected a file path")


def _count(args: argparse.Namespace, part: str) -> int:
    """``--n-<part>`` when given, else ``--n``."""
    specific = getattr(args, f"n_{part}")
    return args.n if specific is None else specific


def run(args: argparse.Namespace) -> int:
    """Validate everything, load the model, evaluate, print and write the results."""
    from sst_merge_plugin.evaluation.report import result_summary_table
    from sst_merge_plugin.evaluation.suite import EvalConfig, prepare_eval_data

    _check_inputs(args)
    config = EvalConfig(
        harmful=args.harmful,
        benign=args.benign,
        utility=tuple(args.utility),
        truefalse=args.truefalse,
        **{f"n_{part}": _count(args, part) for part in PARTS},
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        harmful_field=args.harmful_field,
        benign_field=args.benign_field,
    )
    data = prepare_eval_data(config)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sst_merge_plugin.evaluation.suite import evaluate_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    model.to(device).eval()
    result = evaluate_model(model, tokenizer, config, progress=not args.no_progress, data=data)
    result["model"] = str(args.model)
    result["adapter"] = args.adapter
    write_text(args.json, json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    table = result_summary_table(result)
    if args.markdown is not None:
        write_text(args.markdown, table)
    print(table, end="")
    print(f"evaluated in {result['seconds']:.1f} s -> {args.json}")
    return 0
