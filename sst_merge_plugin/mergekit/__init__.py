"""mergekit 0.1.5 host adapter: the SST merge methods for ``mergekit-yaml``.

* :mod:`.tensor_merge` — :func:`~.tensor_merge.merge_tensor`, the host-neutral per-tensor
  merge (utility merge by mergekit's own built-ins + SST projection / baselines) that the
  FusionBench algorithm calls too;
* :mod:`.params` — the parameter table of the four methods, parsers, misspelled-key checker;
* :mod:`.fisher_source` — the Fisher files of a merge, opened once and shared;
* :mod:`.methods` — the ``GroupMergeMethod`` adapters; :mod:`.registration` — registration and
  the planner/``run_merge`` hooks; :mod:`.validation` — checks before anything is written;
* :mod:`.session`, :mod:`.report`, :mod:`.adapter` — per-run records, the JSON report and
  model-card section, the PEFT adapter output.

Importing this package has no side effects (it is imported while mergekit is half-initialised);
registration happens through :mod:`sst_merge_plugin._autoload` or
:func:`.registration.install`.
"""
