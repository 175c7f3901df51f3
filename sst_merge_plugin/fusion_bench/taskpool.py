"""``sst_safety``: a FusionBench task pool scoring any causal LM on safety and utility, offline.

:class:`SSTSafetyTaskPool` is a thin adapter over
:func:`sst_merge_plugin.evaluation.suite.evaluate_model`: harmful refusal rate, over-refusal
rate on benign prompts, exact-match utility on held-out task items, per-token log-likelihood
accuracy on true/false statement pairs; batched greedy generation; the refusal judge's rule
counts. It works for every FusionBench method (built-in or SST), because it only needs the
merged ``nn.Module`` and a tokenizer.

* ``evaluation`` — the fields of :class:`~sst_merge_plugin.evaluation.suite.EvalConfig`
  (prompt sets by registered name or file path, skills or task files, item counts, generation
  settings, seed); fields left out take EvalConfig's defaults. The data are selected when the
  pool is built, so a bad name or file fails before the merge runs.
* ``tokenizer`` — a tokenizer folder; ``null`` takes the model pool's tokenizer.
* ``name`` — the run's label in the Markdown row (the shipped config uses the Hydra choice of
  ``method``); ``knob`` — an optional setting shown next to it.
* ``markdown_path`` — where the one-row Markdown table of this run is written (atomically;
  ``{log_dir}`` is the run's log folder; ``null`` writes none).

:meth:`~SSTSafetyTaskPool.evaluate` returns ``evaluate_model``'s dict plus ``name`` and
``knob``; FusionBench stores it as the run's JSON report (``program_report.json``).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Mapping
from typing import Any

from fusion_bench import BaseTaskPool
from fusion_bench.mixins import auto_register_config
from omegaconf import OmegaConf
from torch import nn

from sst_merge_plugin.atomic import write_text
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.evaluation.report import markdown_table
from sst_merge_plugin.evaluation.suite import EvalConfig, evaluate_model, prepare_eval_data

log = logging.getLogger(__name__)


def eval_config(values: Mapping[str, Any] | None) -> EvalConfig:
    """``EvalConfig(**values)``; unknown keys are an :class:`SSTError` with a suggestion."""
    values = dict(OmegaConf.to_container(values) if OmegaConf.is_config(values) else values or {})
    known = [f.name for f in dataclasses.fields(EvalConfig)]
    for key in values:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise SSTError(
                f"evaluation: unknown key {key!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(known)}")
            )
    if isinstance(values.get("utility"), list):
        values["utility"] = tuple(values["utility"])
    return EvalConfig(**values)


@auto_register_config
class SSTSafetyTaskPool(BaseTaskPool):
    """Safety and utility of a causal LM (see the module docstring for the parameters)."""

    def __init__(
        self,
        evaluation: Mapping[str, Any] | None = None,
        tokenizer: str | None = None,
        name: str | None = None,
        knob: Any = None,
        markdown_path: str | None = "{log_dir}/sst_safety.md",
        progress: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._eval_config = eval_config(evaluation)
        self._data = prepare_eval_data(self._eval_config)

    def _tokenizer(self) -> Any:
        if self.tokenizer is not None:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.tokenizer)
        modelpool = getattr(self._program, "modelpool", None)
        if modelpool is None or not hasattr(modelpool, "load_tokenizer"):
            raise SSTError("sst_safety needs a tokenizer: set taskpool.tokenizer to its folder")
        return modelpool.load_tokenizer()

    def evaluate(self, model: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Score ``model``; write the Markdown row; return the JSON-serialisable report."""
        result = evaluate_model(
            model, self._tokenizer(), self._eval_config, progress=self.progress, data=self._data
        )
        name = self.name or type(model).__name__
        report = {"name": name, "knob": self.knob, **result}
        self._write_markdown({"method": name, "knob": self.knob, **result})
        return report

    def _write_markdown(self, row: Mapping[str, Any]) -> None:
        if self.markdown_path is None:
            return
        path = str(self.markdown_path)
        if "{log_dir}" in path:
            log_dir = getattr(self._program, "log_dir", None)
            if log_dir is None:
                log.warning("no FusionBench log folder: Markdown row not written (%s)", path)
                return
            path = path.format(log_dir=log_dir)
        write_text(path, markdown_table([row]))
