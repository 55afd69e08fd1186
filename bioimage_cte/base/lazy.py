"""Modules imported on first use: scipy's are about two seconds of start-up that a refused input never needs.

``rank`` checks packages and images before any model runs; a run that stops there (an alias bomb, an image too
large, a bad output path) should cost no more than starting Python. Modules whose functions need scipy take it
through :func:`lazy_module`, which returns the module object at once and runs its import at the first attribute
access.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy_module"]


def lazy_module(name: str) -> ModuleType:
    """``import name``, deferred until an attribute of the module is first used.

    Examples
    --------
    >>> ndimage = lazy_module("scipy.ndimage")
    >>> ndimage.label([[0, 1], [1, 0]])[1]
    2
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
