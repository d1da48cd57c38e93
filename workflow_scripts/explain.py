"""Rule explain_nla_av: a route's explanations from the golds (the route kind's explain step)."""
from causal_kl.logs import run_script
from causal_kl.routes import explain_job

run_script(explain_job, snakemake)  # noqa: F821
