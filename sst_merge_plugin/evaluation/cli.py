"""``sst-merge evaluate``: evaluate one model (optionally with a LoRA adapter) on the safety–utility
suite, print a summary table and write the full result as JSON (and a Markdown table).

All names, files and fields are checked (:func:`~sst_merge_plugin.evaluation.suite.
prepare_eval_data`, model/adapter folders, that the model folder has a tokenizer, that the
output paths can be written) before torch or the model is loaded; the tokenizer and whether the
adapter fits the model (its layers against a weightless copy of the model) before the weights
are loaded. Each problem is one :class:`SSTError` line, raised before anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sst_merge_plugin.atomic import check_writable, write_text
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.tasks import SKILLS

ADAPTER_CONFIG = "adapter_config.json"
#: files of a saved Hugging Face tokenizer (``AutoTokenizer`` needs at least one of them)
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
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
    if not any((model / name).is_file() for name in TOKENIZER_FILES):
        raise SSTError(
            f"--model {str(model)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:2])}, "
            "...); save one with the model, e.g. run mergekit-yaml without --no-copy-tokenizer"
        )
    if args.threads is not None and args.threads < 1:
        raise SSTError(f"--threads must be >= 1, got {args.threads}")
    for option, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is not None:
            check_writable(path, option)


def _first_line(error: BaseException) -> str:
    """``error``'s message on one line: its first non-empty line, plus the second when the first
    only introduces a list (transformers and PEFT write many lines, e.g. one per size mismatch)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def _load_tokenizer(model: str):
    """The tokenizer of the folder ``model``; :class:`SSTError` (one line) when it does not load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SSTError(
            f"--model {model!r}: cannot load its tokenizer ({_first_line(error)})"
        ) from None


def _check_adapter_fits(model: str, adapter: str) -> None:
    """An adapter whose LoRA layers the model does not have (or has in another shape) is an
    error, found on a weightless copy of the model. Adapters this check cannot read are left
    to PEFT (whose errors :func:`run` reports in one line too)."""
    from sst_merge_plugin.fisher.adapter import check_adapter_matches, read_lora_adapter
    from sst_merge_plugin.fisher.targets import layer_shape, linear_candidates, meta_model

    try:
        lora = read_lora_adapter(adapter)
    except SSTError:
        return
    skeleton = meta_model(model)
    shapes = {name: layer_shape(module) for name, module in linear_candidates(skeleton).items()}
    check_adapter_matches(lora, shapes, model)


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
    from transformers import AutoModelForCausalLM

    from sst_merge_plugin.evaluation.suite import evaluate_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = _load_tokenizer(args.model)
    if args.adapter is not None:
        _check_adapter_fits(args.model, args.adapter)
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise SSTError(
            f"--model {args.model!r}: cannot load the model ({_first_line(error)})"
        ) from None
    if args.adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise SSTError(
                f"--adapter {args.adapter!r} does not load onto --model {args.model!r} "
                f"({_first_line(error)})"
            ) from None
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
