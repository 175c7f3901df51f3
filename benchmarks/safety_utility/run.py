"""The full safety–utility benchmark (``sst-merge demo --profile full``; ``--model`` for another model).

Every method of :data:`sst_merge_plugin.bench.profile.FULL` (SmolLM2-135M-Instruct, the
default) or of the model's own full profile (``--model qwen-coder-0.5b``:
:data:`~sst_merge_plugin.bench.profile.QWEN`, the drift scenario) with its knob swept, through
the cached pipeline of :mod:`sst_merge_plugin.bench.pipeline` (adapters, Fisher files,
mergekit merges, evaluations), into ``--out`` (default ``benchmarks/safety_utility/results``,
``results-<model>`` for another model): ``results.json``, ``results.md``, ``pareto.png`` and
``run.json`` (``inputs/`` — the adapters and Fisher files, gigabytes with ``kfac`` — only with
``--inputs``).

    python benchmarks/safety_utility/run.py --threads 2
    python benchmarks/safety_utility/run.py --methods task_arithmetic sst_lora_soft
    python benchmarks/safety_utility/run.py --model qwen-coder-0.5b --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sst_merge_plugin.bench.demo import add_arguments, run_profile
from sst_merge_plugin.bench.profile import profile_for
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.data.models import DEFAULT_MODEL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, full=True)
    parser.set_defaults(out=None, inputs=False)
    args = parser.parse_args(argv)
    try:
        if args.out is None:
            # by the model the run is on (``--profile qwen`` alone runs on Qwen too)
            model = profile_for(args.profile, args.model, full=True).model
            folder = "results" if model == DEFAULT_MODEL else f"results-{model}"
            args.out = str(Path(__file__).parent / folder)
        return run_profile(args, "SST-Merge safety–utility benchmark", full=True)
    except SSTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
