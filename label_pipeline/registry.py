"""A name -> class registry for plugin packages (zero-shot backends, augmenters).

Classes register themselves with a decorator; a name not registered yet is looked up as a
module ``<package>.<name>`` and imported on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import ClassVar, Generic, Protocol, TypeVar

from label_pipeline.errors import ConfigError


class _Named(Protocol):
    name: ClassVar[str]


T = TypeVar("T", bound=_Named)


class Registry(Generic[T]):
    """Classes of one package by name.

    Args:
        package: dotted name of the package whose modules hold the classes.
        not_members: module names in that package that define no class to register.
        unknown: the :class:`ConfigError` message for an unknown name, a format string with
            ``{name!r}`` and ``{choices}`` (the available names, comma-separated).
    """

    def __init__(self, package: str, not_members: Iterable[str], unknown: str) -> None:
        self.package = package
        self.not_members = frozenset(not_members)
        self.unknown = unknown
        self.classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: set the class's ``name`` and make it available under it."""

        def wrap(cls: type[T]) -> type[T]:
            cls.name = name
            self.classes[name] = cls
            return cls

        return wrap

    def available(self) -> list[str]:
        """Names of every module in the package (imported or not) and every registered class."""
        pkg = importlib.import_module(self.package)
        names = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
        return sorted((names - self.not_members) | set(self.classes))

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``, importing its module if needed."""
        if name not in self.classes and name in self.available():
            importlib.import_module(f"{self.package}.{name}")
        if name not in self.classes:
            choices = ", ".join(self.available())
            raise ConfigError(self.unknown.format(name=name, choices=choices))
        return self.classes[name]
