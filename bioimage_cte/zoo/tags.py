"""Task tags as the zoo writes them: ``--tag nuclei`` also finds a model tagged ``nucleus``.

Zoo authors spell the same task differently (a published nuclei model carries ``nucleus``, ours carry
``nuclei``), so a tag matches its singular/plural form and the members of a small synonym table:

==============  ===========================================
task            tags that match it
==============  ===========================================
nuclei          nuclei, nucleus, nuclear
cells           cells, cell
membrane        membrane, membranes, boundaries, boundary
mitochondria    mitochondria, mitochondrion, mito
==============  ===========================================

Any other tag matches itself and its plural or singular (``organoid`` / ``organoids``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SYNONYMS", "matches_tag", "task_groups", "tag_variants"]

#: canonical task -> the tags that name it (lower case); documented in the module docstring and README
SYNONYMS: dict[str, frozenset[str]] = {
    "nuclei": frozenset({"nuclei", "nucleus", "nuclear"}),
    "cells": frozenset({"cells", "cell"}),
    "membrane": frozenset({"membrane", "membranes", "boundaries", "boundary"}),
    "mitochondria": frozenset({"mitochondria", "mitochondrion", "mito"}),
}


def _number_forms(tag: str) -> set[str]:
    forms = {tag}
    if tag.endswith("ies"):
        forms.add(tag[:-3] + "y")
    elif tag.endswith("s") and not tag.endswith("ss"):
        forms.add(tag[:-1])
    else:
        forms.add(tag + ("ies" if tag.endswith("y") and tag[-2:-1] not in "aeiou" else "s"))
        if tag.endswith("y"):
            forms.add(tag + "s")
    return forms


def tag_variants(tag: str) -> frozenset[str]:
    """Every tag that ``tag`` matches (lower case).

    Examples
    --------
    >>> sorted(tag_variants("Nucleus"))
    ['nuclear', 'nuclei', 'nucleus']
    >>> sorted(tag_variants("organoid"))
    ['organoid', 'organoids']
    """
    tag = tag.strip().lower()
    for group in SYNONYMS.values():
        if tag in group or _number_forms(tag) & group:
            return group
    return frozenset(_number_forms(tag))


def matches_tag(tags: Iterable[str], tag: str) -> bool:
    """Whether a model with ``tags`` has the task ``tag`` (see :func:`tag_variants`).

    Examples
    --------
    >>> matches_tag(["segmentation", "nucleus"], "nuclei")
    True
    >>> matches_tag(["cells"], "nuclei")
    False
    """
    wanted = tag_variants(tag)
    return any(str(t).strip().lower() in wanted for t in tags)


def task_groups(tags: Iterable[str]) -> set[str]:
    """The tasks of the synonym table a model's tags name (empty when none does).

    Examples
    --------
    >>> sorted(task_groups(["segmentation", "nucleus", "fluorescence"]))
    ['nuclei']
    """
    lowered = {str(t).strip().lower() for t in tags}
    return {task for task, group in SYNONYMS.items() if lowered & group}
