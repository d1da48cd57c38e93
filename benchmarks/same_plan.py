#!/usr/bin/env python
"""The jobs a dry run plans, as sorted JSON, and whether two such plans are the same.

A refactoring that must not change what users see (issue #30: one registry of output paths, a declarative
``rules/common.smk``) is checked by planning the same invocations before and after it and comparing::

    git checkout main && python benchmarks/same_plan.py -o /tmp/demo-before.json
    git checkout my-branch && python benchmarks/same_plan.py -o /tmp/demo-after.json
    python benchmarks/same_plan.py --compare /tmp/demo-before.json /tmp/demo-after.json

Everything after the options is passed to ``snakemake -n`` (put ``--`` before arguments that start with ``-``)::

    python benchmarks/same_plan.py -o prod.json -- --configfile config/gemma3-27b.yaml
    python benchmarks/same_plan.py --fake-sites -o slurm.json -- --profile profiles/slurm

Each plan is made in a fresh copy of this checkout's workflow (its rules, config, profiles; no results/), so every
job is planned. ``--fake-sites`` first writes the ``sites`` checkpoint's outputs by hand (``bench_scale.fake_sites``,
from the config the arguments name), so that the plan also holds every per-shard job (and, under a cluster profile,
the group each job is in). A job is its rule, inputs, outputs, log, wildcards and group, as Snakemake prints them;
``--compare`` prints the jobs only one plan has and exits 1 when the plans differ.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

JOB = re.compile(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):\s*$")
FIELD = re.compile(r"^\s+(input|output|log|wildcards): (.*)$")
GROUP = re.compile(r"Group job (\S+) \(jobs in lexicogr\. order\):")


def parse_plan(output: str) -> list[dict]:
    """The jobs of a dry run's output (``snakemake -n``): rule, fields and group of each, sorted."""
    jobs, job, group = [], None, None
    for line in output.splitlines():
        if m := GROUP.search(line):
            group, job = m.group(1), None
        elif m := JOB.match(line):
            job = {"rule": m.group(1), "group": group if line[:1].isspace() else None}
            if not line[:1].isspace():
                group = None
            jobs.append(job)
        elif job is not None and (m := FIELD.match(line)):
            job[m.group(1)] = m.group(2).split(", ") if m.group(1) != "wildcards" else m.group(2)
        elif line.strip() and not line[:1].isspace():
            job = None
            if not line.startswith(("[", "Shell command")):
                group = None
    return sorted(jobs, key=lambda j: json.dumps(j, sort_keys=True))


def _config_of(args: list[str]) -> dict:
    """The validated config that ``snakemake ARGS`` runs (``--configfile``, else the demo's), for fake sites."""
    from causal_kl.config import DEFAULT_CONFIG, load_config

    files = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--configfile"]
    return load_config(ROOT / (files[-1] if files else DEFAULT_CONFIG))


def plan(snakemake_args: list[str], fake_sites: bool = False) -> list[dict]:
    import bench_scale

    with tempfile.TemporaryDirectory(prefix="same-plan-") as tmp:
        wf = bench_scale.copy_workflow(Path(tmp) / "wf")
        if fake_sites:
            bench_scale.fake_sites(wf, _config_of(snakemake_args))
        res = subprocess.run([sys.executable, "-m", "snakemake", "-n", *snakemake_args], cwd=wf, capture_output=True,
                             text=True, env=bench_scale.snakemake_env(Path(tmp)))
        if res.returncode != 0:
            sys.exit(f"same_plan: snakemake -n {' '.join(snakemake_args)} failed:\n{(res.stdout + res.stderr)[-3000:]}")
        return parse_plan(res.stdout + res.stderr)


def compare(a: list[dict], b: list[dict]) -> list[str]:
    """Lines naming each job only one plan has (empty: the plans are identical)."""
    key = lambda j: json.dumps(j, sort_keys=True)  # noqa: E731
    only_a, only_b = {key(j) for j in a} - {key(j) for j in b}, {key(j) for j in b} - {key(j) for j in a}
    return [f"- {j}" for j in sorted(only_a)] + [f"+ {j}" for j in sorted(only_b)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="say whether two plans are identical")
    parser.add_argument("--fake-sites", action="store_true", help="plan the per-shard jobs too (sites made by hand)")
    parser.add_argument("-o", "--out", help="write the plan here (default: stdout)")
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="arguments for snakemake -n (any not ours)")
    args, rest = parser.parse_known_args(argv)  # snakemake's own options (--configfile, --profile) pass through
    args.snakemake_args = rest + args.snakemake_args
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        diff = compare(a, b)
        print("\n".join(diff) if diff else f"identical: {len(a)} jobs")
        if diff:
            print(f"different: {len(diff)} jobs differ ({len(a)} jobs in {args.compare[0]}, {len(b)} in {args.compare[1]})")
        return 1 if diff else 0
    snakemake_args = [a for a in args.snakemake_args if a != "--"]
    text = json.dumps(plan(snakemake_args, args.fake_sites), indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"{len(json.loads(text))} jobs -> {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
