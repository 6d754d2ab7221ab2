"""Plugins by name, each with a typed settings model: one mechanism for the four kinds.

The classification methods (:mod:`label_pipeline.methods`), augmenters
(:mod:`label_pipeline.augmenters`), zero-shot backends (:mod:`label_pipeline.zeroshot`) and
query strategies (:mod:`label_pipeline.active`) each keep a :class:`Registry`. A plugin is a
class with a ``name`` and a ``Settings`` model, registered with the registry's decorator:

- ``Settings`` subclasses :class:`PluginSettings`: every setting a typed field with its
  default and its description (``Field(description=...)`` or the class docstring's
  ``Attributes:``), checked when the model is built; unknown keys fail, listing the known ones.
- A validator's own error is :func:`setting_error`: a sentence whose subject is the setting
  (``"members is empty; name two or more methods"``), so that the message reads the same
  after the path it is reported under (``train.method_params.ensemble.members is empty ...``).
- :func:`checked_settings` builds a plugin's settings from plain keyword arguments or raises
  a :class:`~label_pipeline.errors.ConfigError` naming every bad setting by its config path;
  :func:`relocated` hands the same errors to an enclosing pydantic model (a config section),
  so that they carry their full path there too.

Members are found in one of two ways: ``module_per_member`` registries (augmenters, zero-shot
backends) import the module ``<package>.<name>`` on first use of ``name``; the others import
``package`` once, which registers every member.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import pydantic_core.core_schema as core_schema
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from label_pipeline.errors import ConfigError

#: error type of a validator's own message (a sentence whose subject is the setting)
INVALID = "invalid_setting"
#: error type of a key that names no setting
UNKNOWN = "unknown_setting"
_BUILTIN_ERRORS = frozenset(typing.get_args(core_schema.ErrorType))

S = TypeVar("S", bound="PluginSettings")


class PluginSettings(BaseModel):
    """Base of every plugin's settings model: unknown keys fail, defaults are validated too
    (so validators that normalise a value also normalise its default)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def setting_error(message: str) -> PydanticCustomError:
    """The error a settings validator raises: ``message`` starts with the setting's name
    (``"weight=0.0 must lie in (0, 1]"``)."""
    return PydanticCustomError(INVALID, "{message}", {"message": message})


def field_error(title: str, field: str, message: str, value: Any) -> ValidationError:
    """:func:`setting_error` located at ``field``: what a model validator that checks several
    fields together raises (pydantic puts the enclosing path before ``field``)."""
    detail = InitErrorDetails(type=setting_error(message), loc=(field,), input=value)
    return ValidationError.from_exception_data(title, [detail])


def _unknown(model: type[BaseModel], key: Any) -> PydanticCustomError:
    names = list(model.model_fields)
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return PydanticCustomError(
        UNKNOWN,
        "{message}",
        {"message": f"unknown setting{hint}; allowed here: {', '.join(names)}"},
    )


def relocated(
    exc: ValidationError, *prefix: str | int, model: type[BaseModel] | None = None
) -> list[InitErrorDetails]:
    """The errors of ``exc`` with ``prefix`` put before their locations, to raise again as
    ``ValidationError.from_exception_data(title, errors)`` from an enclosing validator (pydantic
    then reports each under its full path). With ``model``, a key that names none of its
    fields becomes an :data:`UNKNOWN` error listing them."""
    out: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc") or ())
        kind: Any = err["type"]
        ctx = dict(err.get("ctx") or {})
        if kind == "extra_forbidden" and model is not None and len(loc) == 1:
            kind = _unknown(model, loc[0])
        elif kind not in _BUILTIN_ERRORS:
            kind = PydanticCustomError(kind, "{message}", {"message": err["msg"]})
        detail = InitErrorDetails(type=kind, loc=(*prefix, *loc), input=err.get("input"))
        if ctx and isinstance(kind, str):
            detail["ctx"] = ctx
        out.append(detail)
    return out


def validate_settings(
    model: type[S], params: Mapping[str, Any] | None, context: dict[str, Any] | None = None
) -> S:
    """``model`` built from ``params``; a :class:`ValidationError` whose unknown keys list the
    model's settings."""
    try:
        return model.model_validate(dict(params or {}), context=context)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            model.__name__, relocated(exc, model=model)
        ) from None


def settings_error(exc: ValidationError, where: str) -> str:
    """The errors of ``exc``, each naming the setting by its path under ``where``
    (``train.method_params.finetune.epochs=0: Input should be ...``), joined by ``; ``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err.get("loc") or ()]
        if err["type"] == INVALID:  # the message starts with the setting's name
            lines.append(".".join([where, *loc[:-1], err["msg"]]))
        elif err["type"] in (UNKNOWN, "missing"):
            lines.append(f"{'.'.join([where, *loc])}: {err['msg']}")
        else:
            shown = repr(err.get("input"))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            lines.append(f"{'.'.join([where, *loc])}={shown}: {err['msg']}")
    return "; ".join(lines)


def checked_settings(
    model: type[S],
    params: Mapping[str, Any] | None,
    where: str,
    context: dict[str, Any] | None = None,
) -> S:
    """``model`` built from ``params``, or a :class:`ConfigError` naming each bad setting by
    its path under ``where`` (see :func:`settings_error`)."""
    try:
        return validate_settings(model, params, context)
    except ValidationError as exc:
        raise ConfigError(settings_error(exc, where)) from None


class _Plugin(Protocol):
    name: ClassVar[str]


T = TypeVar("T", bound=_Plugin)


class Registry(Generic[T]):
    """Plugin classes of one kind by name.

    Args:
        package: dotted name of the package (or module) whose modules define the members.
        unknown: the :class:`ConfigError` message for an unknown name, a format string with
            ``{name!r}`` and ``{choices}`` (the available names, comma-separated).
        module_per_member: a member ``name`` lives in the module ``<package>.<name>``,
            imported on first use (the package's other modules are ``not_members``);
            otherwise importing ``package`` registers every member.
        not_members: modules of ``package`` that define no member (``module_per_member``).
    """

    def __init__(
        self,
        package: str,
        unknown: str,
        *,
        module_per_member: bool = False,
        not_members: Iterable[str] = (),
    ) -> None:
        self.package = package
        self.unknown = unknown
        self.module_per_member = module_per_member
        self.not_members = frozenset(not_members)
        #: the registered classes by name, in registration order
        self.classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: set the class's ``name`` and make it available under it."""

        def wrap(cls: type[T]) -> type[T]:
            cls.name = name
            return self.add(cls)

        return wrap

    def add(self, cls: type[T]) -> type[T]:
        """Make ``cls`` available under its ``name``."""
        self.classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        """Every member's name, sorted (modules not imported yet included)."""
        pkg = importlib.import_module(self.package)
        names = set(self.classes)
        if self.module_per_member:
            names |= {m.name for m in pkgutil.iter_modules(pkg.__path__)} - self.not_members
        return sorted(names)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name`` (importing its module if needed)."""
        if name not in self.classes:
            if not self.module_per_member:
                importlib.import_module(self.package)
            elif name in self.names():
                importlib.import_module(f"{self.package}.{name}")
        if name not in self.classes:
            raise ConfigError(self.unknown.format(name=name, choices=", ".join(self.names())))
        return self.classes[name]

    def members(self) -> dict[str, type[T]]:
        """Every member class by name, sorted by name (imports them all)."""
        return {name: self.get(name) for name in self.names()}

    def settings(self, name: str) -> type[PluginSettings] | None:
        """The settings model of the member ``name`` (None when it declares none)."""
        return getattr(self.get(name), "Settings", None)
