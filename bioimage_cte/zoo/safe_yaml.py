"""Parsing YAML that came from someone else (a model package's rdf.yaml) with bounded time and memory.

A YAML alias bomb is a few hundred bytes whose aliases nest: each level repeats the one below
it nine times, so ten levels stand for billions of nodes. The parser itself shares aliased
nodes and stays fast, but every consumer that walks the parsed data (our own checks,
bioimageio.spec's validation, ``json.dumps``) expands it and spins for minutes. The document is
therefore composed into its node graph first, which is linear in its size, and refused when it
is too large, uses too many aliases or would expand to too many nodes; only then is it
constructed into Python data.

Parsing is ruyaml's safe loader with YAML 1.2, as bioimageio.spec reads RDFs: no tags, no code. A ranking reads
each rdf.yaml several times before its model loads (the package check, the tag filter, the input layout, the task
warnings, the model's own check), so a document parsed once is not parsed again: the pure-Python parser takes
tens of milliseconds per rdf.yaml, as long as several forward passes of a small network.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
from collections import OrderedDict
from typing import Any

from bioimage_cte.base.errors import UnsafeYamlError

__all__ = ["DEFAULT_MAX_ALIASES", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_NODES", "load_untrusted_yaml"]

DEFAULT_MAX_BYTES = 1024**2
"""Largest YAML document read (1 MiB); the zoo's largest rdf.yaml files are a few tens of kB."""
DEFAULT_MAX_ALIASES = 100
"""Most ``*alias`` references in one document; hand-written RDFs use a handful, if any."""
DEFAULT_MAX_NODES = 100_000
"""Most nodes of the document with every alias expanded; the zoo's RDFs have a few hundred."""

_FIX = "fix or remove the package"

#: documents parsed in this process, by content and limits (the last :data:`_PARSED_KEPT`)
_PARSED: OrderedDict[tuple[bytes, int, int, int], Any] = OrderedDict()
_PARSED_KEPT = 256
_PARSED_LOCK = threading.Lock()


def load_untrusted_yaml(
    text_or_bytes: str | bytes,
    *,
    where: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_aliases: int = DEFAULT_MAX_ALIASES,
) -> Any:
    """Parse one YAML 1.2 document safely, refusing documents too large or expanding too far to handle.

    Parameters
    ----------
    text_or_bytes : str or bytes
        The document; bytes are decoded as UTF-8.
    where : str
        Names the document in error messages, e.g. ``"rdf.yaml of models/unet.zip"``.
    max_bytes : int, optional
        Largest document size, in UTF-8 bytes.
    max_aliases : int, optional
        Most alias references (``*name``).
    max_nodes : int, optional
        Most nodes (scalars, sequences, mappings) once every alias is expanded.

    Returns
    -------
    Any
        The document as plain Python data (dicts, lists, scalars); ``None`` for an empty one.
        Aliased values are shared objects, as with any YAML loader.

    Raises
    ------
    UnsafeYamlError
        The document breaks a limit, nests too deeply, or holds an alias to a collection that
        contains it (a recursive structure).
    UnicodeDecodeError
        ``text_or_bytes`` is bytes that are not UTF-8.
    ruyaml.error.YAMLError
        The document is not valid YAML (or uses a tag the safe loader refuses).

    Examples
    --------
    >>> load_untrusted_yaml("base: &b {x: 1}\\nother: *b\\n", where="example.yaml")
    {'base': {'x': 1}, 'other': {'x': 1}}
    >>> bomb = "a: &a [x, x, x]\\nb: &b [*a, *a, *a]\\nc: [*b, *b, *b]\\n"
    >>> load_untrusted_yaml(bomb, where="bomb.yaml", max_nodes=20)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bioimage_cte.base.errors.UnsafeYamlError: bomb.yaml expands to more than 20 YAML nodes (limit 20): ...
    """
    raw = text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode("utf-8", "surrogatepass")
    key = (hashlib.sha256(raw).digest(), max_bytes, max_nodes, max_aliases)
    with _PARSED_LOCK:
        parsed = _PARSED.get(key, _PARSED)
    if parsed is _PARSED:  # never parsed (a document that failed is parsed again, and fails again)
        parsed = _parse(text_or_bytes, where=where, max_bytes=max_bytes, max_nodes=max_nodes, max_aliases=max_aliases)
        with _PARSED_LOCK:
            _PARSED[key] = parsed
            while len(_PARSED) > _PARSED_KEPT:
                _PARSED.popitem(last=False)
    return copy.deepcopy(parsed)  # the caller's own data: changing it changes no later parse


def _parse(text_or_bytes: str | bytes, *, where: str, max_bytes: int, max_nodes: int, max_aliases: int) -> Any:
    # a str cannot be shorter in UTF-8 than in characters: the cheap test first, so a huge str is never encoded
    size = len(text_or_bytes)
    if size <= max_bytes and isinstance(text_or_bytes, str):
        size = len(text_or_bytes.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise UnsafeYamlError(f"{where} is over the size limit of {max_bytes} bytes: too large for a YAML model "
                              f"description; {_FIX}")
    text = text_or_bytes.decode("utf-8") if isinstance(text_or_bytes, bytes) else text_or_bytes

    from ruyaml import YAML

    yaml = YAML(typ="safe", pure=True)  # pure: the Python composer, which _BoundedComposer extends
    yaml.Composer = _bounded_composer(where=where, max_nodes=max_nodes, max_aliases=max_aliases)
    constructor, parser = yaml.get_constructor_parser(text)
    try:
        try:
            node = constructor.composer.get_single_node()
        except RecursionError:
            raise UnsafeYamlError(f"{where} nests YAML collections too deeply to parse: a damaged or hostile file; "
                                  f"{_FIX}") from None
        if node is None:
            return None
        _check_graph(node, where=where, max_nodes=max_nodes)
        return constructor.construct_document(node)
    finally:  # as YAML.load does: the parser holds the whole text until disposed
        parser.dispose()
        for attr, reset in (("_reader", "reset_reader"), ("_scanner", "reset_scanner")):
            with contextlib.suppress(AttributeError):
                getattr(getattr(yaml, attr), reset)()


def _too_many_aliases(where: str, n: int, limit: int) -> UnsafeYamlError:
    return UnsafeYamlError(f"{where} uses {n} YAML aliases (limit {limit}): a YAML alias bomb or a damaged file; "
                           f"{_FIX}")


def _too_many_nodes(where: str, limit: int) -> UnsafeYamlError:
    return UnsafeYamlError(f"{where} expands to more than {limit} YAML nodes (limit {limit}): a YAML alias bomb or "
                           f"a damaged file; {_FIX}")


def _bounded_composer(*, where: str, max_nodes: int, max_aliases: int) -> type:
    """ruyaml's composer, stopping as soon as the document has more aliases or written-out nodes than allowed.

    Counting while composing bounds the parse itself: the pure-Python parser takes tens of
    microseconds a node, so a megabyte of tiny scalars would otherwise take seconds to refuse.
    """
    from ruyaml.composer import Composer
    from ruyaml.events import AliasEvent

    class BoundedComposer(Composer):
        aliases = 0
        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.parser.check_event(AliasEvent):
                self.aliases += 1
                if self.aliases > max_aliases:
                    raise _too_many_aliases(where, self.aliases, max_aliases)
            else:
                self.nodes += 1
                if self.nodes > max_nodes:
                    raise _too_many_nodes(where, max_nodes)
            return super().compose_node(parent, index)

    return BoundedComposer


def _children(node: Any) -> list[Any]:
    value = node.value
    if isinstance(value, list):  # a sequence's items, or a mapping's (key, value) pairs
        return [n for item in value for n in (item if isinstance(item, tuple) else (item,))]
    return []  # a scalar


def _check_graph(root: Any, *, where: str, max_nodes: int) -> None:
    """Refuse a composed document with an alias to its own ancestor, or whose aliases expand too far.

    The composer shares one node object between an anchor and all its aliases, so the document
    is a graph no larger than its text. Each distinct node is visited once (iteratively: no
    recursion limit to hit) and its expanded size is the sum of its children's, memoized and
    saturated just above ``max_nodes`` so the numbers stay small.
    """
    expanded: dict[int, int] = {}
    on_path: set[int] = set()  # expanded but not finished: exactly the ancestors of the node being expanded
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            expanded[key] = min(max_nodes + 1, 1 + sum(expanded[id(c)] for c in _children(node)))
            continue
        if key in expanded:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise UnsafeYamlError(f"{where} has a YAML alias inside the collection it names (a structure that "
                                      f"contains itself, which never ends when expanded); {_FIX}")
            if id(child) not in expanded:
                stack.append((child, False))
    if expanded[id(root)] > max_nodes:
        raise _too_many_nodes(where, max_nodes)
