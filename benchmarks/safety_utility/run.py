"""The full safety–utility benchmark on SmolLM2-135M-Instruct (``sst-merge demo --profile full``).

Every method of :data:`sst_merge_plugin.bench.profile.FULL` with its knob swept, through the
cached pipeline of :mod:`sst_merge_plugin.bench.pipeline` (adapters, Fisher files, mergekit
merges, evaluations), into ``--out`` (default ``benchmarks/safety_utility/results``):
``results.json``, ``results.md``, ``pareto.png`` and ``run.json`` (``inputs/`` — the adapters and
Fisher files, gigabytes with ``kfac`` — only with ``--inputs``).

    python benchmarks/safety_utility/run.py --threads 2
    python benchmarks/safety_utility/run.py --methods task_arithmetic sst_lora_soft
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sst_merge_plugin.bench.demo import add_arguments, run_profile
from sst_merge_plugin.core.errors import SSTError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(out=str(Path(__file__).parent / "results"), profile="full", inputs=False)
    args = parser.parse_args(argv)
    try:
        return run_profile(args, "SST-Merge safety–utility benchmark")
    except SSTError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
