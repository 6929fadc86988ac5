"""Post-import hooks: run a callback when a module finishes importing (or now, if it already has).

This is how `import diffpress` registers its diffusers quantizer backend and its LoRA layers without
importing diffusers, peft or torch itself: a finder on `sys.meta_path` watches for the named modules
and, once one has executed, calls the callbacks registered for it. Nothing here imports anything
heavy.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Callable

Callback = Callable[[object], None]

_pending: dict[str, list[Callback]] = {}
_lock = threading.RLock()


def when_imported(module_name: str, callback: Callback) -> None:
    """Call `callback(module)` once `module_name` is imported: now if it is already, else right after
    its code has run."""
    with _lock:
        module = sys.modules.get(module_name)
        if module is None:
            _pending.setdefault(module_name, []).append(callback)
            _install_finder()
            return
    callback(module)


def _run(module_name: str, module) -> None:
    with _lock:
        callbacks = _pending.pop(module_name, [])
    for callback in callbacks:
        callback(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it asks the other finders and wraps the loader."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _pending or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = self._spec_from_others(fullname, path, target)
        finally:
            self._busy.discard(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, fullname)
        return spec

    def _spec_from_others(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader; runs the module's callbacks once its code has executed."""

    def __init__(self, loader, fullname: str) -> None:
        self._loader, self._fullname = loader, fullname

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _run(self._fullname, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


_finder: _Finder | None = None


def _install_finder() -> None:
    global _finder
    if _finder is None:
        _finder = _Finder()
        sys.meta_path.insert(0, _finder)
