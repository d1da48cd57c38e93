"""Wrapping a third-party method only where its installed source is the one the wrapper was written against.

The workflow fixes three behaviours of Snakemake and its SLURM plugin by wrapping one function each
(``repair.rebuild_missing_inputs``, ``cluster.check_each_group_once``, ``cluster.see_cancelled_slurm_jobs``). Each is
applied by ``wrap_where_source_fits``: once (a marker on the wrapper says it is in place), and only where the source
it relies on reads as expected, so that another version is left alone and the caller can say so in the run's log.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable


def wrap_where_source_fits(owner: Any, name: str, wrap: Callable[[Callable], Callable], marker: str,
                           fits: Callable[[str], bool], source_of: Any = None, coroutine: bool = False) -> bool:
    """Replace ``owner.name`` by ``wrap(original)`` where the installed code is the one the wrapper was written for.

    ``fits(source)`` reads the source of ``source_of`` (default: the original itself; the caller of the original
    where the wrapper relies on how it is called). ``coroutine``: the original must be an ``async def``. The wrapper
    gets the original's name and docstring (``__wrapped__``: the original) and ``marker``, so a second call finds it in
    place. Returns whether the wrapper is in place; nothing is changed when it is not.
    """
    original = getattr(owner, name, None)
    if original is None or (coroutine and not inspect.iscoroutinefunction(original)):
        return False
    if getattr(original, marker, False):
        return True
    try:
        source = inspect.getsource(original if source_of is None else source_of)
    except (OSError, TypeError):
        return False
    if not fits(source):
        return False
    wrapper = functools.wraps(original)(wrap(original))
    setattr(wrapper, marker, True)
    setattr(owner, name, wrapper)
    return True
