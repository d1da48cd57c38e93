"""The house's layout holds: every rule reaches its code in one hop by name, in an env that can import it.

Convention (docs/ARCHITECTURE.md): ``rules/x.smk: rule y`` -> ``workflow_scripts/y.py`` ->
``causal_kl/jobs/x.py: y()``, whose keyword arguments are exactly the rule's named input, output,
params and wildcards (plus ``provenance``). Checked on the workflow as Snakemake parses it, not by
reading the files as text.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from causal_kl import conditions, paths
from causal_kl.jobs import PROVENANCE
from causal_kl.model_rules import GROUP_PACKING, MODEL_RULES, is_model_rule
from workflow_helpers import ANALYSIS_ENV_BLOCKS, ROOT, TORCH_ENV_BLOCKS, blocked_imports_env, copy_workflow

ENV_BLOCKS = {"analysis": ANALYSIS_ENV_BLOCKS, "torch": TORCH_ENV_BLOCKS}
FIELD_ORDER = ("wildcard_constraints", "input", "output", "log", "params", "threads", "resources", "priority", "group", "conda",
               "script")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """The workflow as Snakemake parses it (the demo config: every rule, demo rules included)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, OutputSettings, Quietness, ResourceSettings,
                                          StorageSettings, WorkflowSettings)

    wd = copy_workflow(tmp_path_factory.mktemp("layout"))
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(cores=1), config_settings=ConfigSettings(),
                          storage_settings=StorageSettings(), workflow_settings=WorkflowSettings(),
                          snakefile=wd / "Snakefile", workdir=wd)._workflow
        rules = [r for r in wf.rules if r.name != "all"]
        yield {r.name: r for r in rules}


MODEL_RULE_SCRIPTS = {"gold", "span_gold", "patch_floors", "patch_route"}
"""The per-shard model rules, whose scripts name their job (run_model_rule) so that the job's process, which only
waits for the model server, imports no numpy, pyarrow or pandas (issue #32 item 3)."""


def _stage(rule) -> str:
    return Path(rule.snakefile).stem


def _job(rule):
    return getattr(importlib.import_module(f"causal_kl.jobs.{_stage(rule)}"), rule.name)


def _names(items) -> list[str]:
    return list(items.keys())


def test_every_rule_has_a_script_named_after_it_calling_its_job(workflow):
    assert len(workflow) > 30
    for name, rule in workflow.items():
        assert rule.script == f"../workflow_scripts/{name}.py", (name, rule.script)
        script = ROOT / "workflow_scripts" / f"{name}.py"
        tree = ast.parse(script.read_text())
        imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        if name in MODEL_RULE_SCRIPTS:  # names its job instead of importing it (causal_kl.jobs.run_model_rule)
            func = _job(rule)
            assert f'run_model_rule("causal_kl.jobs.{_stage(rule)}:{name}", snakemake)' in script.read_text(), script.name
            assert is_model_rule(name) and PROVENANCE in inspect.signature(func).parameters, name
            continue
        if Path(rule.conda_env).stem == "analysis":  # names its job: forked from the analysis server
            func = _job(rule)
            assert f'run_analysis_rule("causal_kl.jobs.{_stage(rule)}:{name}", snakemake)' in script.read_text(), script.name
            assert not getattr(func, "model_job", False), name
            continue
        assert (f"causal_kl.jobs.{_stage(rule)}", name) in imports, f"{script.name} does not import its job"
        assert f"run_rule({name}, snakemake)" in script.read_text(), script.name
    scripts = {p.stem for p in (ROOT / "workflow_scripts").glob("*.py")}
    assert scripts == set(workflow), f"scripts without a rule: {sorted(scripts - set(workflow))}"


def test_every_job_takes_exactly_its_rules_fields(workflow):
    for name, rule in workflow.items():
        func = _job(rule)
        params = inspect.signature(func).parameters
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD or p.kind is inspect.Parameter.KEYWORD_ONLY
                   for p in params.values()), name
        fields = _names(rule.input) + _names(rule.output) + _names(rule.params) + sorted(rule.wildcard_names)
        assert len(fields) == len(set(fields)), f"rule {name}: a name is used twice in {fields}"
        assert set(params) - {PROVENANCE} == set(fields), (name, sorted(params), sorted(fields))


def test_every_input_and_output_is_named(workflow):
    for name, rule in workflow.items():
        for part in (rule.input, rule.output):
            covered = sum((j if j is not None else i + 1) - i for i, j in part._names.values())
            assert covered == len(part), f"rule {name} has an unnamed input or output"


def test_rule_fields_in_house_order(root):
    """input, output, log, params, threads, resources, conda, script: the same order in every rule."""
    for smk in sorted((root / "rules").glob("*.smk")):
        for block in re.split(r"\n\s*(?:rule|checkpoint) \w+:\n", smk.read_text())[1:]:
            fields = re.findall(r"^\s{4,8}(\w+):", block, re.M)
            fields = [f for f in fields if f in FIELD_ORDER]
            assert fields == sorted(fields, key=FIELD_ORDER.index), (smk.name, fields)


def test_job_modules_import_in_their_rules_env(workflow):
    """Each rule's job module imports with only what its conda env provides (the others blocked)."""
    by_env: dict[str, set[str]] = {}
    for rule in workflow.values():
        env = Path(rule.conda_env).stem
        assert env in ENV_BLOCKS, f"rule {rule.name}: unknown env {rule.conda_env}"
        by_env.setdefault(env, set()).add(f"causal_kl.jobs.{_stage(rule)}")
    assert set(by_env) == set(ENV_BLOCKS)
    for env, modules in by_env.items():
        code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in sorted(modules))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=blocked_imports_env(ENV_BLOCKS[env]), timeout=300)
        assert res.returncode == 0, f"{env} env: {res.stderr[-2000:]}"
    # and the blocker really blocks
    res = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                         env=blocked_imports_env(ANALYSIS_ENV_BLOCKS))
    assert res.returncode != 0 and "blocked" in res.stderr


def test_no_condition_name_is_spelled_outside_its_vocabulary():
    """Condition names live in causal_kl/conditions.py; other modules import the constants.

    Checked for every name that cannot mean anything else (``recon_goldnorm``, ``resample_cross_doc``, ...,
    anywhere in a string) and for ``clean`` as a whole string; ``gold``, ``zero`` and ``mean`` also name
    files, contracts and columns, so they are left to review.
    """
    distinctive = [c for c in conditions.CONDITIONS if "_" in c]
    short = {conditions.CLEAN}
    pattern = re.compile("|".join(map(re.escape, distinctive)))
    offenders = []
    for path in sorted((ROOT / "causal_kl").rglob("*.py")):
        if path.name == "conditions.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if pattern.search(node.value) or node.value in short:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "\n".join(offenders)


def test_model_jobs_are_the_rules_that_ask_for_a_gpu_and_their_clients_stay_light(workflow):
    """The rules with a ``gpu`` resource, as Snakemake parsed them, are exactly the table of model rules (whose jobs
    run_rule sends to the model server); the job's own process imports no torch."""
    model_rules = {name for name, rule in workflow.items() if "gpu" in rule.resources}
    assert model_rules == set(MODEL_RULES) and {"gold", "patch_floors", "patch_route"} <= model_rules, model_rules
    assert {entry.group for entry in MODEL_RULES.values()} - {None} <= set(GROUP_PACKING)
    modules = sorted({f"causal_kl.jobs.{_stage(workflow[n])}" for n in model_rules} | {"causal_kl.client", "causal_kl.jobs"})
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=blocked_imports_env(("torch", "transformers")))
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_slurm_profile_gives_a_gpu_to_exactly_the_model_rules(workflow):
    """profiles/slurm's set-resources (read as Snakemake reads a profile: YAML, after its YTE definitions) give a GPU to
    the parsed rules that take one and to no other, and the same resources to every grouped rule (its jobs share an
    allocation: one model job's resources each)."""
    import yaml

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    resources = profile["set-resources"]
    assert set(resources) <= set(workflow), sorted(set(resources) - set(workflow))
    gpu_rules = {name for name, rule in workflow.items() if "gpu" in rule.resources}
    assert {name for name, res in resources.items() if res.get("gpu") or res.get("gres")} == gpu_rules
    grouped = [resources[name] for name, entry in MODEL_RULES.items() if entry.group]
    assert all(res == grouped[0] for res in grouped), grouped


def test_snakemake_lint_and_snakefmt_report_nothing(tmp_path):
    """Snakemake's own conventions: `snakemake --lint` finds nothing and `snakefmt --check` would change no file."""
    wd = copy_workflow(tmp_path / "wf")
    (wd / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())  # snakefmt's line length
    lint = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=wd, capture_output=True, text=True,
                          timeout=300)
    out = lint.stdout + lint.stderr
    assert lint.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out, out[-3000:]
    assert "Lints for" not in out, out[-3000:]
    fmt = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules/"], cwd=wd,
                         capture_output=True, text=True, timeout=300)
    assert fmt.returncode == 0, fmt.stdout[-3000:] + fmt.stderr[-3000:]


# ------------------------------------------------------------------ one registry of output paths (causal_kl.paths)
def _run_dir(workflow) -> str:
    return f"results/{next(iter(workflow.values())).workflow.config['run']}"


def _as_regex(template: str) -> re.Pattern:
    """A template (``results/demo/L{layer}/gold.parquet``) as a pattern its filled-in forms match."""
    return re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)))


def test_every_output_of_a_rule_is_in_the_path_registry_and_every_registered_path_is_an_output(workflow):
    """Snakemake's parsed rules against ``causal_kl.paths``: each output under ``results/{run}/`` is one of its templates
    (the rules read it: a path re-spelled in a rule would differ from it, or go unregistered), outputs elsewhere are the
    demo's assets; every template is some rule's output, but the sites checkpoint's shards (files in its folder)."""
    from snakemake.io import strip_wildcard_constraints  # Snakemake writes each rule's constraints into its outputs

    root = _run_dir(workflow)
    registry = paths.file_templates(root)
    outputs = {strip_wildcard_constraints(str(f)): name for name, rule in workflow.items() for f in rule.output}
    outside = {name for f, name in outputs.items() if not f.startswith(root + "/")}
    assert outside == {"demo_corpus", "demo_tokenizer", "demo_model", "demo_sae", "demo_sublayer_sae"}, outside
    unregistered = sorted(f"{name}: {f}" for f, name in outputs.items() if f.startswith(root + "/") and f not in registry)
    assert not unregistered, unregistered
    assert sorted(registry[t] for t in set(registry) - set(outputs)) == ["site_shard"]
    # a rule's fixed inputs under results/ are registered templates too (some fields filled: span1's floors)
    patterns = [_as_regex(t) for t in registry]
    for name, rule in workflow.items():
        for f in (strip_wildcard_constraints(f) for f in rule.input if isinstance(f, str) and f.startswith(root + "/")):
            assert any(p.fullmatch(f) for p in patterns), f"rule {name}: input {f} is not in causal_kl.paths"


def test_the_rules_spell_no_output_path():
    """Output paths are spelled in causal_kl/paths.py alone: no string in rules/ names a results file (only the demo's
    training record, outside results/, and the published tables' folder, which are not outputs of a run)."""
    files = re.compile(r"""(["'])[^"'\n]*\.(?:csv|parquet|json|html|png|svg)\1""")
    allowed = {'"resources/demo/training.json"', '"{name}.csv"'}
    spelled = [f"{smk.name}: {m.group(0)}" for smk in sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
               for line in smk.read_text().splitlines() if not line.strip().startswith("#")
               for m in files.finditer(line) if m.group(0) not in allowed]
    assert not spelled, spelled


def _brace_expand(text: str) -> list[str]:
    """``a.{png,svg}`` -> ``a.png``, ``a.svg`` (a brace without a comma is a wildcard and stays)."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", text)
    if m is None:
        return [text]
    return [e for alt in m.group(1).split(",") for e in _brace_expand(text[:m.start()] + alt + text[m.end():])]


def test_docs_paths_lists_exactly_the_registry():
    """docs/PATHS.md's path column (R, RL, RS tables) and causal_kl.paths name the same files."""
    prefixes = {"RS/": f"{paths.SPAN}/", "RL/": f"{paths.POINT}/", "R/": ""}
    listed = set()
    for line in (ROOT / "docs" / "PATHS.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        for path in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            if path.startswith("resources/"):  # the demo's assets: not outputs of a run
                continue
            prefix = next(p for p in prefixes if path.startswith(p))
            path = prefixes[prefix] + path[len(prefix):].replace("span{k}", "span{span}")
            listed.update(_brace_expand(path))
    registry = {t.lstrip("/") for t, name in paths.file_templates("").items() if name not in paths.FOLDERS}
    assert sorted(listed - registry) == [] and sorted(registry - listed) == []


def test_a_template_fills_only_the_fields_given():
    template = paths.TEMPLATES["patch"]
    assert paths.fill(template, span=1) == "L{layer}/span1/patch/{route}.parquet"
    assert paths.fill(template, layer="3.mlp_out", span=4, route="pca", extra="x") == "L3.mlp_out/span4/patch/pca.parquet"
    assert paths.for_run("demo").route_tables["conditions"] == "results/demo/L{layer}/tables/{route}/conditions.csv"


def test_a_path_reads_back_its_fields_and_the_logs_sit_beside_the_results():
    patch = paths.TEMPLATES["patch"]
    assert paths.fields(patch, "results/demo/L3.mlp_out/span2/patch/floors.parquet") == {
        "layer": "3.mlp_out", "span": "2", "route": "floors"}
    assert paths.fields(patch, "L3/span1/patch/pca.parquet") == {"layer": "3", "span": "1", "route": "pca"}
    assert paths.fields(patch, "results/demo/span2/patch/floors.parquet") is None  # no point folder
    assert paths.fields(patch, "results/demo/L3/span2/patch/floors.csv") is None
    assert paths.fields(patch, "results/demo/L3/x/span2/patch/floors.parquet") is None  # a field spans no "/"
    assert paths.in_point("patch_index") == "patch.json"
    assert paths.log_roots("demo") == ("logs/demo", "logs/demo/L{layer}", "logs/demo/L{layer}/span{span}")
    assert paths.run_log("demo", "model_server") == "logs/demo/model_server.log"


def test_every_rules_log_sits_under_the_registrys_log_folders_at_its_level(workflow):
    """Snakemake's parsed ``log:`` of every run rule is under ``paths.log_roots``: a span's rule under the span's
    folder, a point's under the point's, a run's directly under the run's (the demo's asset rules log outside)."""
    from snakemake.io import strip_wildcard_constraints

    run_logs, point_logs, span_logs = paths.log_roots(next(iter(workflow.values())).workflow.config["run"])
    outside, wrong = set(), []
    for name, rule in workflow.items():
        for log in (strip_wildcard_constraints(str(f)) for f in rule.log):
            wildcards = set(rule.wildcard_names)
            if _stage(rule) == "demo":
                outside.add(name)
            elif "span" in wildcards:
                wrong += [] if log.startswith(span_logs + "/") else [f"{name}: {log}"]
            elif "layer" in wildcards:
                wrong += [] if log.startswith(point_logs + "/") and "{span}" not in log else [f"{name}: {log}"]
            elif not (log.startswith(run_logs + "/") and "{layer}" not in log):
                wrong.append(f"{name}: {log}")
    assert not wrong, wrong
    assert outside == {"demo_corpus", "demo_tokenizer", "demo_model", "demo_sae", "demo_sublayer_sae"}, outside


def _module_rows() -> dict[str, str]:
    """docs/ARCHITECTURE.md's module table: each row's first cell -> the whole row."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## Modules: one concept each", 1)[1].split("\n## ", 1)[0]
    return {row.split("|")[1]: row for row in table.splitlines() if row.startswith("| `")}


def test_architecture_names_every_module_and_only_modules_that_exist():
    """Every module of the package has a row in docs/ARCHITECTURE.md (a subpackage's modules are named in its
    row, or as ``pkg/name`` anywhere on the page), and every module or subpackage the page names exists."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = _module_rows()
    first_cells = {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}
    package = ROOT / "causal_kl"
    unnamed = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.name == "__init__.py":
            continue
        if len(rel.parts) == 1:
            if path.stem not in first_cells:
                unnamed.append(str(rel))
            continue
        sub = "/".join(rel.parts[:-1])
        row = next((r for cell, r in rows.items() if f"`{sub}/`" in cell), "")
        named = f"`{path.stem}`" in row or re.search(rf"`{re.escape(sub)}/{path.stem}(\.py)?[`:]", text)
        if not named:
            unnamed.append(str(rel))
    assert not unnamed, f"modules without a mention in docs/ARCHITECTURE.md: {unnamed}"

    missing = [name for name in first_cells
               if not ((package / f"{name}.py").is_file() or (name.endswith("/") and (package / name).is_dir()))]
    for sub in (name for name in first_cells if name.endswith("/")):
        row = next(r for cell, r in rows.items() if f"`{sub}`" in cell)
        missing += [f"{sub}{name}" for name in re.findall(r"`([a-z_]+)`", row.split("|")[2])
                    if not (package / sub / f"{name}.py").is_file() and not (package / f"{name}.py").is_file()
                    and f"def {name}(" not in (package / sub / "__init__.py").read_text()]
    missing += [ref for ref in re.findall(r"`((?:jobs|demo|routes)/[a-z_]+)(?:\.py)?[`:]", text)
                if not (package / f"{ref}.py").is_file()]
    assert not missing, f"docs/ARCHITECTURE.md names modules that do not exist: {sorted(set(missing))}"
