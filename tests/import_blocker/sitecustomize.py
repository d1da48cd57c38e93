"""Make chosen packages unimportable in every Python process started with this folder on PYTHONPATH.

``CAUSAL_KL_BLOCK_IMPORTS=torch,transformers`` makes ``import torch`` (and its submodules) raise
ImportError, as it would in a conda env that lacks them: the env-import checks run rules and job
modules under it to prove each one works with only the packages its ``envs/*.yaml`` provides.
"""

import importlib.abc
import os
import sys

_BLOCKED = {name.strip() for name in os.environ.get("CAUSAL_KL_BLOCK_IMPORTS", "").split(",") if name.strip()}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in _BLOCKED:
            raise ImportError(f"{fullname} is not in this rule's conda env (blocked by CAUSAL_KL_BLOCK_IMPORTS)")
        return None


if _BLOCKED:
    sys.meta_path.insert(0, _Blocker())
