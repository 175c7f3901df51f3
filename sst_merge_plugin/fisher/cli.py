"""``sst-merge fisher``: collect one Fisher file from a model (+ adapter) and a data set.

The command line is a :class:`~sst_merge_plugin.fisher.request.FisherRequest` (same option
names, ``-`` for ``_``; data selection and checks are documented there) handed to
:func:`~sst_merge_plugin.fisher.collect.collect_fisher_file`, which checks everything before it
loads the model and writes the file atomically. Any error is an :class:`SSTError` (exit status
2) and leaves no file; so does Ctrl-C.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sst_merge_plugin.core.kinds import kind_names
from sst_merge_plugin.fisher import Objective
from sst_merge_plugin.fisher.request import DEFAULTS, Device, FisherRequest, Split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``fisher`` sub-command's options (defaults: :data:`~.request.DEFAULTS`)."""
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
        "--response-field",
        default=DEFAULTS["response_field"],
        help="lm: response field (default: response)",
    )
    parser.add_argument(
        "--target-field",
        help="refusal: take each prompt's refusal target from this field of its record (e.g. "
        "the model's own refusals) instead of the seeded templates",
    )
    parser.add_argument("--objective", required=True, choices=Objective.values())
    parser.add_argument("--kind", required=True, choices=kind_names())
    parser.add_argument(
        "--restrict-to",
        metavar="ADAPTER",
        nargs="+",
        default=(),
        help="LoRA adapter folder(s) whose column/row spaces (several: their joint span) "
        "restrict a --kind lora Fisher",
    )
    parser.add_argument(
        "--targets",
        help="Linear layers: comma-separated names (q_proj,v_proj) or a regex over weight "
        "names; default: every Linear inside the decoder blocks (not lm_head)",
    )
    parser.add_argument("--out", required=True, help="Fisher file to write (.safetensors)")
    parser.add_argument("--max-examples", type=int, help="use at most N examples (seeded subset)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument(
        "--max-length", type=int, default=DEFAULTS["max_length"], help="tokens per example"
    )
    parser.add_argument(
        "--response-tokens",
        type=int,
        default=DEFAULTS["response_tokens"],
        help="kl: tokens sampled per prompt",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULTS["seed"], help="refusal targets, kl sampling, subset"
    )
    parser.add_argument("--device", choices=Device.values(), default=str(DEFAULTS["device"]))
    parser.add_argument(
        "--split", choices=Split.values(), default=str(DEFAULTS["split"]), help="default: train"
    )


def request_from_args(args: argparse.Namespace) -> FisherRequest:
    """The :class:`FisherRequest` of a parsed command line (everything but ``--out``)."""
    values = {key: value for key, value in vars(args).items() if not key.startswith("_")}
    values.pop("command", None)
    values.pop("out")
    return FisherRequest(**values)


def run(args: argparse.Namespace) -> int:
    """Collect and write ``--out``; print a one-line summary."""
    from sst_merge_plugin.fisher.collect import collect_fisher_file
    from sst_merge_plugin.fisher.file import FisherFile

    request = request_from_args(args)
    started = time.perf_counter()
    out = collect_fisher_file(request, args.out)
    written = FisherFile(out)
    print(
        f"wrote {args.out}: {written.kind} Fisher of {len(written.weight_names())} weights, "
        f"objective {written.objective}, {written.n_examples} examples, {written.n_tokens} "
        f"tokens, {Path(out).stat().st_size / 2**20:.1f} MiB, "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0
