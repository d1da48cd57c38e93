"""Rule patch_route_aggregate (rules/patch.smk): Every shard of one route -> patch/{route}.parquet: a route added later reruns only its own analysis."""
from causal_kl.jobs import run_rule
from causal_kl.jobs.patch import patch_route_aggregate

run_rule(patch_route_aggregate, snakemake)  # noqa: F821
