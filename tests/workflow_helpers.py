"""Running the real Snakefile from tests: copy the workflow into a temp dir, write a tiny config, run."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ("Snakefile", "rules", "config", "workflow_scripts", "envs", "reports", "profiles")
BLOCKER = ROOT / "tests" / "import_blocker"
ANALYSIS_ENV_BLOCKS = ("torch", "transformers", "tokenizers", "safetensors", "datasets")
"""What envs/analysis.yaml lacks that the torch env has."""
TORCH_ENV_BLOCKS = ("matplotlib", "seaborn")
"""What envs/torch.yaml lacks that the analysis env has."""


def blocked_imports_env(blocked, base: dict | None = None) -> dict:
    """Environment variables under which ``blocked`` packages cannot be imported (tests/import_blocker)."""
    env = dict(base if base is not None else os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BLOCKER)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["CAUSAL_KL_BLOCK_IMPORTS"] = ",".join(blocked)
    return env


def copy_workflow(dest: Path, root: Path = ROOT) -> Path:
    """Copy the workflow (not results/ or resources/) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in WORKFLOW:
        src = root / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, dirs_exist_ok=True)
        elif src.exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def tiny_config(corpus_path: Path, model_path: Path, **over) -> dict:
    """A run of a few sites on the tests' tiny Gemma-3 and fixture corpus (no demo assets)."""
    config = {
        "run": "t", "seed": 42, "device": "cpu", "dtype": "float32",
        "corpus": {"name": "c", "path": str(corpus_path), "split": "train", "column": "content", "rows": [0, 4]},
        "model": {"path": str(model_path), "layer": 2},
        "sites": {"positions_per_doc": 3, "min_position": 50, "max_length": 256, "max_sites": 6, "shard_size": 3},
        "routes": {},
    }
    config.update(over)
    return config


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_snakemake(workdir: Path, *args: str, timeout: int = 900, blocked: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> str:
    """``snakemake --cores 1 ARGS`` in ``workdir`` (offline, one thread per job); asserts success.

    ``blocked`` packages cannot be imported by Snakemake or any job (e.g. ``TORCH_ENV_BLOCKS`` for a run
    of model rules only: they must work in envs/torch.yaml, which has no plotting libraries). ``env``: more
    environment variables (e.g. a ``CAUSAL_KL_RUNTIME_DIR`` of its own, for runs side by side).
    """
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(env or {}))
    if blocked:
        env = blocked_imports_env(blocked, env)
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *args]
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def dry_run_blocks(out: str) -> list[tuple[str, str | None, str]]:
    """(rule, route wildcard or None, the job's text) of each job a dry run lists."""
    jobs = []
    # (a dry run lists the members of a group job indented: dry runs show the model rules' cluster groups)
    for block in re.split(r"\n(?=\s*(?:local)?(?:rule|checkpoint) \w+:)", out):
        m = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block.strip())
        if m:
            w = re.search(r"wildcards:.*\broute=([^,\s]+)", block)
            jobs.append((m.group(1), w.group(1) if w else None, block))
    return jobs


def dry_run_jobs(out: str) -> list[tuple[str, str | None]]:
    """(rule, route wildcard or None) of each job a dry run lists."""
    return [(rule, route) for rule, route, _ in dry_run_blocks(out)]


def dry_run_shards(out: str, rule: str) -> list[str]:
    """The ``shard`` wildcards of ``rule``'s jobs in a dry run."""
    return sorted(re.findall(rf"rule {rule}:\n(?:.*\n)*?\s+wildcards: [^\n]*?\bshard=(\d+)", out))  # indented too


def recorded_params(workdir: Path) -> dict[str, list[str]]:
    """Rule -> every param Snakemake recorded for its jobs in ``workdir`` (``.snakemake/metadata``): the reprs it
    compares to decide "Params have changed" (snakemake/persistence: ``_serialize_param``, ``params_changed``)."""
    out: dict[str, list[str]] = {}
    for path in (workdir / ".snakemake/metadata").iterdir():
        record = json.loads(path.read_text())
        out.setdefault(record["rule"], []).extend(record.get("params") or [])
    return out


def assert_params_canonical(workdir: Path) -> dict[str, list[str]]:
    """Every recorded param is the repr of a value whose every mapping has its keys in canonical order
    (``config.canonical``), so the same config given in another key order reads as unchanged; returns them."""
    from causal_kl.config import canonical

    params = recorded_params(workdir)
    for rule, texts in params.items():
        for text in texts:
            assert text == repr(canonical(ast.literal_eval(text))), (rule, text)
    return params
