"""Evaluation of merged models: does it refuse harmful requests, over-refuse benign ones, keep skills?

* :mod:`.judge` — offline keyword/prefix refusal judge (which rule fired) and its quality metrics.
* :mod:`.generate` — batched, deterministic greedy generation with the chat template.
* :mod:`.metrics` — refusal rate, utility exact match, per-token log-likelihood statement pairs.
* :mod:`.suite` — :class:`~.suite.EvalConfig`, data selection and :func:`~.suite.evaluate_model`.
* :mod:`.report` — result rows to Markdown, JSON and the safety–utility Pareto plot.
* :mod:`.cli` — ``sst-merge evaluate``.

The utility skills themselves live in :mod:`sst_merge_plugin.data.tasks`.
"""
