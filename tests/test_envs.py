"""envs/*.yaml agree with pyproject.toml: same packages, ranges no wider than pyproject's.

A conda env (``--software-deployment-method conda``) and a pip install must give the code
the same libraries, so every env pin has to be allowed by pyproject and every pyproject
dependency must be in some env (snakemake itself excepted: it drives the jobs from outside).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
"""conda-forge names whose PyPI name differs."""
DRIVER_ONLY = {"snakemake"}
"""pyproject dependencies that run the workflow, not its jobs: in no env."""
TOOLING = {"python", "pip", "setuptools"}
"""Env entries that are not [project] dependencies (checked against other pyproject fields)."""
INF = Version("999999")


@dataclass(frozen=True)
class Interval:
    """The versions a specifier set admits, as [lower, upper] with open/closed ends."""

    lower: Version
    lower_closed: bool
    upper: Version
    upper_closed: bool

    def within(self, other: "Interval") -> bool:
        lo_ok = self.lower > other.lower or (self.lower == other.lower and (other.lower_closed or not self.lower_closed))
        hi_ok = self.upper < other.upper or (self.upper == other.upper and (other.upper_closed or not self.upper_closed))
        return lo_ok and hi_ok


def interval(spec: SpecifierSet) -> Interval:
    lo, lo_c, hi, hi_c = Version("0"), True, INF, True
    for s in spec:
        v = Version(s.version)
        if s.operator in (">=", ">", "==") and (v > lo or (v == lo and s.operator == ">")):
            lo, lo_c = v, s.operator != ">"
        if s.operator in ("<=", "<", "==") and (v < hi or (v == hi and s.operator == "<")):
            hi, hi_c = v, s.operator != "<"
        if s.operator not in (">=", ">", "==", "<=", "<", "!="):
            raise ValueError(f"unsupported operator {s.operator} in {spec}")
    return Interval(lo, lo_c, hi, hi_c)


def parse_conda(entry: str) -> tuple[str, SpecifierSet]:
    """``"pytorch >=2.4,<2.15"`` -> ("torch", SpecifierSet(">=2.4,<2.15")); PEP 440 operators only."""
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", entry.strip())
    name, spec = m.group(1).lower(), m.group(2).replace(" ", "")
    if spec and not re.match(r"^(>=|<=|==|!=|<|>)", spec):
        raise ValueError(f"{entry!r}: write conda pins with PEP 440 operators (>=, <, ==) so they compare")
    return CONDA_TO_PYPI.get(name, name), SpecifierSet(spec)


def load_env(path: Path) -> dict[str, SpecifierSet]:
    doc = yaml.safe_load(path.read_text())
    assert "conda-forge" in doc.get("channels", []), path
    deps = doc["dependencies"]
    assert all(isinstance(d, str) for d in deps), f"{path}: no pip section; causal_kl comes from the post-deploy script"
    pairs = [parse_conda(d) for d in deps]
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), f"{path}: a package listed twice"
    return dict(pairs)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_deps() -> dict[str, SpecifierSet]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {r.name.lower(): r.specifier for r in reqs}


def test_there_are_envs_per_rule_family() -> None:
    assert {p.stem for p in ENVS} >= {"torch", "analysis"}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_are_within_pyproject(env: Path) -> None:
    deps, project = load_env(env), project_deps()
    for name, spec in deps.items():
        if name in TOOLING:
            continue
        assert name in project, f"{env.name}: {name} is not a pyproject dependency (add it there first)"
        assert interval(spec).within(interval(project[name])), \
            f"{env.name}: {name} {spec} allows versions pyproject's {name}{project[name]} does not"
    python = SpecifierSet(pyproject()["project"]["requires-python"])
    assert interval(deps["python"]).within(interval(python)), f"{env.name}: python {deps['python']} vs {python}"
    build = {Requirement(r).name: Requirement(r).specifier for r in pyproject()["build-system"]["requires"]}
    assert interval(deps["setuptools"]).within(interval(build["setuptools"])), env.name


def test_every_pyproject_dependency_is_in_an_env() -> None:
    in_envs = set().union(*(load_env(p) for p in ENVS)) - TOOLING
    missing = set(project_deps()) - DRIVER_ONLY - in_envs
    assert not missing, f"pyproject dependencies in no envs/*.yaml: {sorted(missing)}"


def test_torch_env_has_everything_the_analysis_env_has_but_plotting() -> None:
    """A model rule can import any non-plotting helper an analysis rule does."""
    torch, analysis = load_env(ROOT / "envs/torch.yaml"), load_env(ROOT / "envs/analysis.yaml")
    assert set(analysis) - set(torch) <= {"matplotlib", "seaborn"}
    assert "torch" not in analysis, "the analysis env stays light: no torch"


def test_rules_reference_existing_envs() -> None:
    """Every `conda:` directive in rules/*.smk names a file in envs/."""
    refs = []
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        refs += [(smk.name, m) for m in re.findall(r"conda:\s*\n\s*[\"']([^\"']+)[\"']", text)]
    for smk, ref in refs:
        assert (ROOT / "rules" / ref).resolve().is_file(), f"{smk}: conda: {ref} does not exist"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_post_deploy_script_installs_the_package(env: Path) -> None:
    script = env.with_name(env.stem + ".post-deploy.sh")
    assert script.is_file(), f"{script.name} missing: the env would lack causal_kl"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "pip install --no-deps" in script.read_text()


def test_interval_logic() -> None:
    """The range comparison itself, on hand-checked cases."""
    iv = lambda s: interval(SpecifierSet(s))  # noqa: E731
    assert iv(">=2.4,<2.15").within(iv(">=2.4,<2.15"))
    assert iv(">=2.5,<2.10").within(iv(">=2.4,<2.15"))
    assert not iv(">=2.4").within(iv(">=2.4,<2.15"))
    assert not iv(">=2.3,<2.15").within(iv(">=2.4,<2.15"))
    assert not iv(">=2.4,<=2.15").within(iv(">=2.4,<2.15"))
    assert iv("==2.13.0").within(iv(">=2.4,<2.15"))
    assert iv(">=70.1").within(iv(">=68"))
