"""Small name -> factory registries with errors that list what exists.

Used for model families, objectives, data ops, tokenizers and evaluators. Factories are
registered at import of the module that defines them; `Registry.get` imports the modules listed
in `lazy_modules` first so that heavy dependencies load only when a name is asked for.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from clipray.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, lazy_modules: Iterable[str] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy_modules = list(lazy_modules)
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._lazy_modules:
                importlib.import_module(module)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items
