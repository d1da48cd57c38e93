# Reconstruction routes, per layer: one rule per route kind writing RL/recon/{route}.parquet, then the geometry of
# every route. Each route-kind rule only matches the routes of its kind (wildcard constraint), so adding a route
# to the config adds only that route's jobs; a route reconstructs the layers its `layer` names (default: all).
import re
from pathlib import Path

from causal_kl.routes.file import input_files as file_route_inputs


def route_regex(*kinds):
    """A wildcard constraint matching exactly the configured routes of these kinds (nothing when none)."""
    names = [name for name, route in config["routes"].items() if route["kind"] in kinds]
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


ROUTE_KEYS_OF_NO_CONSEQUENCE = ("expected_fve", "fve_tolerance", "layer")
"""Route keys a reconstruction does not depend on: the geometry re-check, and which layers the route covers."""


def route_params(wildcards):
    """What a route's reconstruction depends on: its config entry without the keys of no consequence."""
    return {k: v for k, v in route_config(wildcards).items() if k not in ROUTE_KEYS_OF_NO_CONSEQUENCE}


def route_path(wildcards, key="path"):
    """A route's file or folder at the job's layer (``{layer}`` filled in)."""
    return layer_path(route_config(wildcards)[key], wildcards.layer)


def train_rows_gold(wildcards):
    """Training golds are shared by every route that trains on the same rows (none for routes that do not train)."""
    entry = route_config(wildcards)
    if "train_rows" not in entry:
        return []
    start, stop = entry["train_rows"]
    return [f"{R}/L{wildcards.layer}/train_gold/rows_{start}_{stop}.parquet"]


def route_files(wildcards):
    """The files a ``file`` route reads at the job's layer (none for other kinds)."""
    entry = route_config(wildcards)
    return file_route_inputs({**entry, "path": route_path(wildcards)}) if entry["kind"] == "file" else []


def sae_input(wildcards):
    """An ``sae`` route's SAE as an input when the demo builds it (else a fingerprint param stands for it)."""
    entry = route_config(wildcards)
    if entry["kind"] != "sae":
        return []
    path = route_path(wildcards)
    return [path] if config.get("demo") and path.startswith(DEMO_SAE_DIR + "/") else []


def sae_fingerprint(wildcards):
    entry = route_config(wildcards)
    return external(route_path(wildcards)) if entry["kind"] == "sae" and not sae_input(wildcards) else None


def checkpoint_path(wildcards):
    """The AR checkpoint a route's reconstruction reads (an nla_av route's second step reads its AR)."""
    route = route_config(wildcards)
    return route["ar_checkpoint"] if route["kind"] == "nla_av" else route["checkpoint"]


def local_checkpoint(wildcards):
    """A route's AR checkpoint directory as an input when it is a local path (a hub id is not a file)."""
    route = route_config(wildcards)
    if route["kind"] not in ("nla_ar", "nla_av"):
        return []
    path = checkpoint_path(wildcards)
    return [path] if Path(path).exists() else []


def nla_explanations(wildcards):
    """nla_av routes make their explanations; nla_ar routes read them from the configured file."""
    route = route_config(wildcards)
    if route["kind"] == "nla_av":
        return [f"{R}/L{wildcards.layer}/explanations/{wildcards.route}.parquet"]
    if route["kind"] == "nla_ar":
        return [route["explanations"]]
    return []


def reconstructor_fingerprints(wildcards):
    """Fingerprints of the external files a route's reconstructor reads (what reruns it when they change)."""
    entry = route_config(wildcards)
    files = route_files(wildcards) + ([] if entry["kind"] != "nla_ar" else nla_explanations(wildcards))
    return {"files": [external(f) for f in files], "sae": sae_fingerprint(wildcards),
            "checkpoint": external(checkpoint_path(wildcards)) if entry["kind"] in ("nla_ar", "nla_av") else None}


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
        gold=f"{RL}/train_gold/rows_{{start}}_{{stop}}.parquet",
    log:
        f"{LL}/train_gold/rows_{{start}}_{{stop}}.log",
    params:
        rows=lambda w: [int(w.start), int(w.stop)],
        **SAMPLING,
        **model_params(),
    resources:
        **model_resources(),
    priority: lambda w: int(w.layer)
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train_gold.py"


rule recon_file:
    wildcard_constraints:
        route=route_regex("file"),
    input:
        vectors=route_files,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
    output:
        recon=f"{RL}/recon/{{route}}.parquet",
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        source_fingerprint=lambda w: [external(f) for f in route_files(w)],
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
        train_gold=train_rows_gold,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
    output:
        recon=f"{RL}/recon/{{route}}.parquet",
    log:
        f"{LL}/recon/{{route}}.log",
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
        train_gold=train_rows_gold,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
        model_dir=model_input(),
    output:
        recon=f"{RL}/recon/{{route}}.parquet",
        explanations=f"{RL}/explanations/{{route}}.parquet",
    log:
        f"{LL}/recon/{{route}}.log",
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


rule recon_sae:
    wildcard_constraints:
        route=route_regex("sae"),
    input:
        sae=sae_input,
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
    output:
        recon=f"{RL}/recon/{{route}}.parquet",
        sparsity=f"{RL}/sae/{{route}}.json",
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        sae_fingerprint=sae_fingerprint,
        device=config["device"],
    resources:
        **model_resources(),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/recon_sae.py"


rule explain_nla_av:
    wildcard_constraints:
        route=route_regex("nla_av"),
    input:
        sites=f"{R}/sites.parquet",
        gold=stored_gold(),
        checkpoint=lambda w: [p for p in [route_config(w)["checkpoint"]] if Path(p).exists()],
    output:
        explanations=f"{RL}/explanations/{{route}}.parquet",
    log:
        f"{LL}/explanations/{{route}}.log",
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
        recon=f"{RL}/recon/{{route}}.parquet",
    log:
        f"{LL}/recon/{{route}}.log",
    params:
        route_entry=route_params,
        checkpoint_fingerprint=lambda w: external(checkpoint_path(w)),
        explanations_fingerprint=lambda w: None if route_config(w)["kind"] == "nla_av" else external(nla_explanations(w)[0]),
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
        recon=f"{RL}/recon/{{route}}.parquet",
        gold=stored_gold(),
        sites=f"{R}/sites.parquet",
    output:
        table=f"{RL}/geometry/{{route}}.parquet",
        summary=f"{RL}/geometry/{{route}}.json",
    log:
        f"{LL}/geometry/{{route}}.log",
    params:
        route_entry=lambda w: {k: v for k, v in route_config(w).items() if k != "layer"},
        variance_constant=config["geometry"]["variance_constant"],
    resources:
        mem_mb=mem_mb(4000),
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/geometry.py"
