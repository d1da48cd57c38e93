"""A route's explanations from the golds (rule explain_nla_av): the route kind's ``explain`` step."""
from causal_kl.analysis import setup_logging
from causal_kl.routes import RouteJob, route_kind

setup_logging(snakemake.log[0])  # noqa: F821
job = RouteJob.from_snakemake(snakemake)  # noqa: F821
route_kind(job.kind).explain(job)
