"""Hook the SST methods into mergekit 0.1.5 (registration, up-front validation, outputs).

mergekit has no plugin discovery; :mod:`sst_merge_plugin._autoload` (run at start-up by the
installed ``.pth``) calls :func:`on_module_imported` when each of three mergekit modules has
finished importing:

* ``mergekit.merge_methods`` → :func:`register_methods`: the four methods are registered with
  ``mergekit.merge_methods.register``;
* ``mergekit.plan`` → :func:`patch_planner`: mergekit's configuration classes keep unknown
  keys from now on (:func:`~.config_keys.retain_unknown_keys`), and ``MergePlanner._plan``
  (used by ``plan_to_disk`` and ``plan_in_memory``) is wrapped: for an SST method it first
  rejects unknown keys in the configuration (:mod:`.config_keys`), then plans, then validates
  every planned tensor (:mod:`.validation`) and activates the run's
  :class:`~.session.MergeSession` — all before the output directory exists;
* ``mergekit.merge`` → :func:`patch_merge`: for an SST method ``run_merge`` is wrapped to
  reject unknown keys in the raw YAML (``config_source``) before anything else, and to merge
  into a temporary sibling of the output folder, write the adapter and
  ``sst_merge_report.json`` there after the weights, and only then move it into place
  (:func:`~sst_merge_plugin.atomic.atomic_path`): an output folder that existed is either left
  untouched (the merge failed; the temporary is removed) or replaced as a whole — no partial
  shards next to an old model, no previous ``sst_adapter/`` left behind. ``generate_card`` (as
  ``mergekit.merge`` calls it) gets the final folder's name and the SST section appended.

Every function is idempotent (re-import, both import orders). Without the start-up hook
(``SST_MERGE_NO_AUTOLOAD=1``) call :func:`install` before running a merge. This module imports
only ``mergekit.merge_methods`` at module level, because it is first imported while
``mergekit.merge`` is still half-initialised.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from mergekit import merge_methods

from sst_merge_plugin.atomic import atomic_path
from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.mergekit import sessions
from sst_merge_plugin.mergekit.methods import SSTMergeMethod
from sst_merge_plugin.method.settings import Method

#: attribute set on the functions this module wrapped (so they are wrapped once)
WRAPPED_MARK = "__sst_merge_wrapped__"
#: the final output folder's name while an SST ``run_merge`` writes into a temporary sibling
#: (the model card is titled with it)
_OUTPUT_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sst_merge_output_name", default=None
)


def register_methods() -> None:
    """Register the four SST methods with mergekit (skipping names already registered)."""
    known = {method.spec.name for method in merge_methods.registered_methods()}
    for method in Method:
        if method not in known:
            merge_methods.register(SSTMergeMethod(method))


def _wrap(owner: Any, attribute: str, make_wrapper: Any) -> None:
    original = getattr(owner, attribute)
    if getattr(original, WRAPPED_MARK, False):
        return
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, WRAPPED_MARK, True)
    setattr(owner, attribute, wrapper)


def patch_planner(plan: ModuleType) -> None:
    """Wrap ``plan.MergePlanner._plan`` with the SST up-front validation (see module doc)."""

    def make(original: Any) -> Any:
        def _plan(self: Any) -> Any:
            method = self.config.merge_method
            if method not in Method.values():
                return original(self)
            from sst_merge_plugin.mergekit.config_keys import check_config_keys, raw_configuration
            from sst_merge_plugin.mergekit.validation import validate_planned_merge

            check_config_keys(raw_configuration(self.config), method)
            result = original(self)
            sessions.activate(validate_planned_merge(method, self._tensors))
            return result

        return _plan

    _wrap(plan.MergePlanner, "_plan", make)
    from sst_merge_plugin.mergekit.config_keys import retain_unknown_keys

    retain_unknown_keys()  # mergekit.plan has imported mergekit.config


def patch_merge(merge: ModuleType) -> None:
    """Wrap ``merge.run_merge`` and ``merge.generate_card`` (see module doc)."""

    def make_run(original: Any) -> Any:
        def run_merge(merge_config: Any, out_path: str, *args: Any, **kwargs: Any) -> Any:
            if merge_config.merge_method not in Method.values():
                return original(merge_config, out_path, *args, **kwargs)
            from sst_merge_plugin.mergekit.config_keys import check_config_keys, raw_configuration
            from sst_merge_plugin.method.report import write_outputs

            bound = inspect.signature(original).bind(merge_config, out_path, *args, **kwargs)
            config_source = bound.arguments.get("config_source")
            raw = raw_configuration(merge_config, config_source)
            check_config_keys(raw, merge_config.merge_method)
            config_yaml = config_source or merge_config.to_yaml()
            base = str(merge_config.base_model.model.path) if merge_config.base_model else ""
            final = Path(out_path)
            if final.exists() and not final.is_dir():
                raise SSTError(f"the output path {str(final)!r} exists and is not a folder")
            sessions.release()
            name = _OUTPUT_NAME.set(final.name)
            try:
                with atomic_path(final, directory=True) as temporary:
                    result = original(merge_config, str(temporary), *args, **kwargs)
                    session = sessions.active()
                    if session is not None:
                        write_outputs(session, temporary, config_yaml, base)
            finally:
                sessions.release()
                _OUTPUT_NAME.reset(name)
            return result

        return run_merge

    def make_card(original: Any) -> Any:
        def generate_card(config: Any, *args: Any, **kwargs: Any) -> str:
            session = sessions.active()
            if session is None or session.method != config.merge_method:
                return original(config, *args, **kwargs)
            if kwargs.get("name") and _OUTPUT_NAME.get():  # not the temporary folder's name
                kwargs["name"] = _OUTPUT_NAME.get()
            card = original(config, *args, **kwargs)
            from sst_merge_plugin.method.report import card_section

            return card + card_section(session)

        return generate_card

    _wrap(merge, "run_merge", make_run)
    _wrap(merge, "generate_card", make_card)


_HANDLERS = {
    "mergekit.merge_methods": lambda module: register_methods(),
    "mergekit.plan": patch_planner,
    "mergekit.merge": patch_merge,
}


def on_module_imported(name: str, module: ModuleType) -> None:
    """Called by :mod:`sst_merge_plugin._autoload` once ``name`` has finished importing."""
    _HANDLERS[name](module)


def install() -> None:
    """Import the three mergekit modules and apply every hook (explicit, idempotent)."""
    for name, handler in _HANDLERS.items():
        handler(importlib.import_module(name))
