# Reconstruction routes: one rule per route kind writing R/recon/{route}.parquet, then the geometry of
# every route. Each route-kind rule only matches the routes of its kind (wildcard constraint), so
# adding a route to the config adds only that route's jobs.
import re
from pathlib import Path

from causal_kl.routes.file import input_files as file_route_inputs


def route_regex(*kinds):
    """A wildcard constraint matching exactly the configured routes of these kinds (nothing when none)."""
    names = [name for name, route in config["routes"].items() if route["kind"] in kinds]
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def route_config(wildcards):
    return config["routes"][wildcards.route]


def route_params(wildcards):
    """What a route's reconstruction depends on: its config entry without the geometry re-check keys."""
    return {k: v for k, v in route_config(wildcards).items() if k not in ("expected_fve", "fve_tolerance")}


def train_gold_path(wildcards):
    """Training golds are shared by every route that trains on the same rows."""
    start, stop = route_config(wildcards)["train_rows"]
    return f"{R}/train_gold/rows_{start}_{stop}.parquet"


def checkpoint_path(wildcards):
    """The AR checkpoint a route's reconstruction reads (an nla_av route's second step reads its AR)."""
    route = route_config(wildcards)
    return route["ar_checkpoint"] if route["kind"] == "nla_av" else route["checkpoint"]


def local_checkpoint(wildcards):
    """A route's AR checkpoint directory as an input when it is a local path (a hub id is not a file)."""
    path = checkpoint_path(wildcards)
    return [path] if Path(path).exists() else []


def nla_explanations(wildcards):
    """nla_av routes make their explanations; nla_ar routes read them from the configured file."""
    route = route_config(wildcards)
    if route["kind"] == "nla_av":
        return f"{R}/explanations/{wildcards.route}.parquet"
    return route["explanations"]


SAMPLING = {"seed": config["seed"], "sampling": config["sites"], "corpus": config["corpus"]}
"""How route-training documents are sampled: exactly like the eval sites."""


rule train_gold:
    wildcard_constraints:
        start=r"\d+",
        stop=r"\d+",
    input:
        corpus_file=corpus_input(),
        model_dir=model_input(),
    output:
        gold=f"{R}/train_gold/rows_{{start}}_{{stop}}.parquet",
    log:
        f"{LOGS}/train_gold/rows_{{start}}_{{stop}}.log",
    params:
        rows=lambda w: [int(w.start), int(w.stop)],
        **SAMPLING,
        **model_params(),
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_gold.py"


rule recon_file:
    wildcard_constraints:
        route=route_regex("file"),
    input:
        vectors=lambda w: file_route_inputs(route_config(w)),
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
    output:
        recon=f"{R}/recon/{{route}}.parquet",
    log:
        f"{LOGS}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        source_fingerprint=lambda w: [external(f) for f in file_route_inputs(route_config(w))],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_file.py"


rule recon_pca:
    wildcard_constraints:
        route=route_regex("pca"),
    input:
        train_gold=train_gold_path,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
    output:
        recon=f"{R}/recon/{{route}}.parquet",
    log:
        f"{LOGS}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        eval_rows=config["corpus"]["rows"],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_pca.py"


rule recon_text_channel:
    wildcard_constraints:
        route=route_regex("text_channel"),
    input:
        train_gold=train_gold_path,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
        model_dir=model_input(),
    output:
        recon=f"{R}/recon/{{route}}.parquet",
        explanations=f"{R}/explanations/{{route}}.parquet",
    log:
        f"{LOGS}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        eval_rows=config["corpus"]["rows"],
        **model_params(),
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_text_channel.py"


rule explain_nla_av:
    wildcard_constraints:
        route=route_regex("nla_av"),
    input:
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
        checkpoint=lambda w: [p for p in [route_config(w)["checkpoint"]] if Path(p).exists()],
    output:
        explanations=f"{R}/explanations/{{route}}.parquet",
    log:
        f"{LOGS}/explanations/{{route}}.log",
    params:
        route_entry=route_params,
        checkpoint_fingerprint=lambda w: external(route_config(w)["checkpoint"]),
        dtype=config["dtype"],
        device=config["device"],
        seed=config["seed"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/explain_nla_av.py"


rule recon_nla_ar:
    wildcard_constraints:
        route=route_regex("nla_ar", "nla_av"),
    input:
        explanations=nla_explanations,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
        checkpoint=local_checkpoint,
    output:
        recon=f"{R}/recon/{{route}}.parquet",
    log:
        f"{LOGS}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        checkpoint_fingerprint=lambda w: external(checkpoint_path(w)),
        explanations_fingerprint=lambda w: None if route_config(w)["kind"] == "nla_av" else external(nla_explanations(w)),
        layer=LAYER,
        dtype=config["dtype"],
        device=config["device"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_nla_ar.py"


rule geometry:
    input:
        recon=f"{R}/recon/{{route}}.parquet",
        gold=stored_gold(),
        sites=f"{R}/sites.parquet",
    output:
        table=f"{R}/geometry/{{route}}.parquet",
        summary=f"{R}/geometry/{{route}}.json",
    log:
        f"{LOGS}/geometry/{{route}}.log",
    params:
        route_entry=route_config,
        variance_constant=config["geometry"]["variance_constant"],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/geometry.py"
