"""mergekit 0.1.5 host adapter: the SST merge methods for ``mergekit-yaml``.

Only the translation to mergekit lives here; the methods themselves are the host-neutral
:mod:`sst_merge_plugin.method` layer, which the FusionBench algorithm calls too.

* :mod:`.specs` — the parameter table as mergekit ``ParameterSpec`` s, the misspelled-key check;
* :mod:`.methods` — the ``GroupMergeMethod`` adapters; :mod:`.registration` — registration and
  the planner/``run_merge`` hooks; :mod:`.validation` — checks on the planned merge before
  anything is written; :mod:`.sessions` — the session of the merge being run.

Importing this package has no side effects (it is imported while mergekit is half-initialised);
registration happens through :mod:`sst_merge_plugin._autoload` or
:func:`.registration.install`.
"""
