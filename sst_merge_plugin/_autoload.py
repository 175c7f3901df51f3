"""Zero-cost auto-registration of the SST merge methods in mergekit (stdlib only).

mergekit 0.1.5 has no plugin discovery: a merge method exists only once
``mergekit.merge_methods.register`` has been called in the running process, and the unmodified
``mergekit-yaml`` console script never imports this plugin. The wheel (and the editable
install) therefore ships ``sst_merge_autoload.pth`` whose single line
``import sst_merge_plugin._autoload`` runs at every Python start-up. This module (and the
package ``__init__`` it implies) must stay tiny and import nothing but ``os``/``sys``: every
Python process of the environment pays for it.

On import it calls :func:`install`, which puts a meta-path finder in front of
``sys.meta_path``. The finder watches three mergekit modules; when one of them *finishes*
executing, it imports :mod:`sst_merge_plugin.mergekit.registration` and calls
``registration.on_module_imported(name, module)``:

* ``mergekit.merge_methods`` → the four methods are registered,
* ``mergekit.plan`` → the planner validates SST configs before anything is written,
* ``mergekit.merge`` → ``run_merge`` writes the SST report; the model card gets a section.

All three are watched from the start because ``mergekit.merge_methods`` is first imported from
inside the import of ``mergekit.merge`` (half-initialised at that moment). Each watch fires
once; the finder leaves ``sys.meta_path`` when nothing is left to watch. Modules that are
already imported when :func:`install` runs (mergekit imported first) are handled at once; a
re-import of this module replaces the previous finder and re-runs the (idempotent) handlers.

Set ``SST_MERGE_NO_AUTOLOAD=1`` to disable the start-up hook; then call
``sst_merge_plugin.mergekit.registration.install()`` to register explicitly.
"""

from __future__ import annotations

import os
import sys

#: the mergekit modules whose completion triggers the plugin (see the module docstring)
WATCHED_MODULES = ("mergekit.merge_methods", "mergekit.plan", "mergekit.merge")
#: setting this environment variable to anything but "" / "0" disables the start-up hook
DISABLE_ENV = "SST_MERGE_NO_AUTOLOAD"


def _notify(name: str, module: object) -> None:
    """Hand a finished mergekit module to the (heavy) registration module.

    When a plugin module that imports mergekit is itself being imported (e.g. user code ran
    ``from sst_merge_plugin.mergekit import params`` first), the registration module cannot be
    imported yet (circular import); the notification is then deferred to mergekit's first
    method lookup (:func:`_defer_to_first_lookup`). Any other failure is turned into a warning:
    a broken plugin must not break unrelated mergekit use (``merge_method: sst_merge`` then
    fails with mergekit's "Unimplemented merge method").
    """
    try:
        from sst_merge_plugin.mergekit import registration

        registration.on_module_imported(name, module)
    except Exception as error:
        if isinstance(error, ImportError) and _plugin_module_initializing():
            _defer_to_first_lookup(name, module)
            return
        import warnings

        warnings.warn(
            f"sst_merge_plugin: could not hook into {name}: {type(error).__name__}: {error}",
            RuntimeWarning,
            stacklevel=2,
        )


def _plugin_module_initializing() -> bool:
    """Whether some ``sst_merge_plugin`` module is in ``sys.modules`` but still executing."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for key, module in list(sys.modules.items())
        if key.startswith("sst_merge_plugin.")
    )


#: the ``mergekit.merge_methods`` functions through which mergekit looks registered methods up
LOOKUPS = ("get", "registered_methods")


def _defer_to_first_lookup(name: str, module: object) -> None:
    """Run ``_notify(name, module)`` just before mergekit's next method lookup.

    ``mergekit.merge_methods.get`` / ``registered_methods`` (looked up as module attributes by
    the planner, the card writer and the merge API) are replaced by one-shot wrappers that
    restore the originals, notify, then perform the lookup — by then the plugin modules have
    finished importing.
    """
    registry = sys.modules.get("mergekit.merge_methods")
    originals = {attribute: getattr(registry, attribute, None) for attribute in LOOKUPS}
    if None in originals.values():
        return

    def restore_and_notify() -> None:
        for attribute, original in originals.items():
            setattr(registry, attribute, original)
        _notify(name, module)

    def deferred(attribute: str):
        def lookup(*args: object):
            restore_and_notify()
            return originals[attribute](*args)

        return lookup

    for attribute in LOOKUPS:
        setattr(registry, attribute, deferred(attribute))


def _fully_imported(name: str) -> object | None:
    """The module ``name`` if it is in ``sys.modules`` and done executing, else ``None``."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is None or getattr(spec, "_initializing", False):
        return None
    return module


class _NotifyingLoader:
    """Wraps a module's real loader; calls ``_notify`` once ``exec_module`` has returned."""

    def __init__(self, loader: object, name: str, finder: _PostImportFinder) -> None:
        self._loader = loader
        self._name = name
        self._finder = finder

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader  # leave no trace
        if not self._finder.pending and self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        _notify(self._name, module)

    def __getattr__(self, attribute: str):
        return getattr(self._loader, attribute)


class _PostImportFinder:
    """Meta-path finder that only intercepts the watched names and delegates the real lookup."""

    sst_merge_finder = True

    def __init__(self) -> None:
        self.pending: set[str] = set()

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    self.pending.discard(fullname)
                    spec.loader = _NotifyingLoader(spec.loader, fullname, self)
                return spec
        return None


def install() -> bool:
    """Set the start-up watches unless :data:`DISABLE_ENV` is set. Returns whether it did."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "sst_merge_finder", False)]
    finder = _PostImportFinder()
    for name in WATCHED_MODULES:
        if name not in sys.modules:
            finder.pending.add(name)
        elif _fully_imported(name) is not None:  # mergekit imported before this hook
            _notify(name, sys.modules[name])
    if finder.pending:
        sys.meta_path.insert(0, finder)
    return True


install()
