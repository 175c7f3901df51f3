"""Unknown keys in a mergekit configuration that names an SST method: an error, never ignored.

mergekit 0.1.5 validates a configuration with pydantic models that *drop* keys they do not know
(``extra="ignore"``: no ``model_extra``), so ``paramters:`` instead of ``parameters:``, a
top-level ``dtyp:`` or a ``filtr:`` in a conditional parameter would merge with defaults.
For a configuration whose ``merge_method`` is an SST method, :func:`check_config_keys` walks the
*raw* configuration against mergekit's own configuration classes (their fields, found by
introspection — no copied key list) and rejects, with a did-you-mean hint:

* a key that is not a field of the section it is in, at every level (top level, ``models``,
  ``slices`` and their ``sources``, ``modules``, ``tokenizer``, conditional parameters
  ``{value, filter}``);
* a parameter name the method does not take (from the method layer's parameter table), and a
  shared parameter under a model's or slice source's ``parameters`` (mergekit would ignore it
  there; per-model parameters are allowed at the top level as defaults).

The raw configuration is the YAML text ``mergekit-yaml`` passes to ``run_merge`` as
``config_source`` or, for programmatic calls, the configuration object dumped with its unknown
keys: :func:`retain_unknown_keys` (applied when ``mergekit.plan`` is imported) switches mergekit's
non-frozen configuration classes to ``extra="allow"``, so a configuration validated after that
keeps them (``model_extra``). Other methods' configurations are never checked; the only change
for them is that ``MergeConfiguration.to_yaml()`` (used by mergekit for the model card when no
``config_source`` is given) shows such keys as written.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from sst_merge_plugin.core.errors import SSTError
from sst_merge_plugin.method.settings import method_parameters


def _configuration_class() -> type[BaseModel]:
    from mergekit.config import MergeConfiguration

    return MergeConfiguration


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _members(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a ``Union``/``Optional`` annotation (the annotation itself if none)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _container(annotation: Any) -> type | None:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict):
        return origin
    return None


def _model_classes(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model class an annotation refers to (through unions and containers)."""
    for member in _members(annotation):
        if _is_model(member):
            yield member
        elif _container(member) is not None:
            for argument in typing.get_args(member):
                yield from _model_classes(argument)


def configuration_classes() -> list[type[BaseModel]]:
    """mergekit's configuration classes reachable from ``MergeConfiguration``, leaves first."""
    ordered: list[type[BaseModel]] = []

    def visit(cls: type[BaseModel]) -> None:
        if cls in ordered:
            return
        for field in cls.model_fields.values():
            for nested in _model_classes(field.annotation):
                visit(nested)
        ordered.append(cls)

    visit(_configuration_class())
    return ordered


def retain_unknown_keys() -> None:
    """Make mergekit's non-frozen configuration classes keep unknown keys (``extra="allow"``).

    Frozen ones (``ModelReference``, ``ModelPath``, the tokenizer classes) are hashed by mergekit
    and left alone; their raw YAML is still checked. Idempotent.
    """
    for cls in configuration_classes():  # leaves first: a parent embeds its children's schemas
        if cls.model_config.get("frozen") or cls.model_config.get("extra") == "allow":
            continue
        cls.model_config["extra"] = "allow"
        cls.model_rebuild(force=True)


def raw_configuration(config: Any, config_source: str | None = None) -> Mapping[str, Any]:
    """The configuration as written: ``config_source`` (YAML) when it parses to a mapping, else
    ``config`` dumped with the keys it kept (see :func:`retain_unknown_keys`)."""
    if config_source:
        try:
            raw = yaml.safe_load(config_source)
        except yaml.YAMLError:
            raw = None
        if isinstance(raw, Mapping):
            return raw
    return config.model_dump(mode="python", exclude_unset=True)


def _hint(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


class _Checker:
    """Walks a raw configuration; collects one problem text per unknown or misplaced key."""

    def __init__(self, method: str) -> None:
        parameters = method_parameters(method)
        self.method = method
        self.every = {p.name for p in parameters}
        self.per_model = {p.name for p in parameters if p.per_model}
        self.problems: list[str] = []

    def value(self, value: Any, annotation: Any, where: str) -> None:
        """Check ``value`` against ``annotation`` (a model class, container or union)."""
        members = _members(annotation)
        if isinstance(value, Mapping):
            models = [m for m in members if _is_model(m)]
            if models:
                self.section(value, self._best(models, value), where)
            for member in members:
                if _container(member) is dict:
                    _, item = typing.get_args(member)
                    for key, entry in value.items():
                        self.value(entry, item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            items = [
                argument
                for member in members
                if _container(member) in (list, tuple)
                for argument in typing.get_args(member)
                if argument is not Ellipsis
            ]
            if items:
                union = typing.Union[tuple(items)]  # noqa: UP007 - built from a tuple
                for index, entry in enumerate(value):
                    model = entry.get("model") if isinstance(entry, Mapping) else None
                    named = f" ({model})" if isinstance(model, str) else ""  # an input
                    self.value(entry, union, f"{where}[{index}]{named}")

    @staticmethod
    def _best(models: list[type[BaseModel]], value: Mapping[str, Any]) -> type[BaseModel]:
        """The model class whose fields cover most of ``value``'s keys."""
        return max(models, key=lambda cls: len(set(value) & set(cls.model_fields)))

    def section(self, value: Mapping[str, Any], cls: type[BaseModel], where: str) -> None:
        fields = cls.model_fields
        known = sorted(fields)
        for key, entry in value.items():
            if key not in fields:
                self.problems.append(
                    f"{where or 'top level'}: unknown key '{key}'{_hint(str(key), known)}"
                )
                continue
            label = f"{where}.{key}" if where else str(key)
            if key == "parameters" and isinstance(entry, Mapping):
                # a section with a ``model`` is one input's: only per-model parameters there
                self.parameters(label, entry, per_model_only="model" in fields)
            self.value(entry, fields[key].annotation, label)

    def parameters(self, where: str, params: Mapping[str, Any], per_model_only: bool) -> None:
        """Parameter names: the method's; under an input, per-model ones only."""
        allowed = self.per_model if per_model_only else self.every
        for key in params:
            if key in allowed:
                continue
            if key in self.every:
                self.problems.append(
                    f"{where}: '{key}' is a shared parameter of {self.method}; mergekit ignores "
                    "it here — set it under the top-level 'parameters:'"
                )
                continue
            self.problems.append(
                f"{where}: unknown parameter '{key}' for {self.method}"
                + _hint(str(key), sorted(self.every))
            )


def check_config_keys(raw: Mapping[str, Any], method: str) -> None:
    """Raise :class:`SSTError` listing every unknown or misplaced key of the raw configuration
    ``raw`` (from :func:`raw_configuration`) of an SST ``method`` (see the module doc)."""
    checker = _Checker(method)
    checker.section(raw, _configuration_class(), "")
    if checker.problems:
        raise SSTError(
            f"{method}: invalid merge configuration:\n  " + "\n  ".join(checker.problems)
        )
