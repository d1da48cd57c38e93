"""Rule geometry: a route's per-site geometry against the golds and its FVE summary."""
from causal_kl.geometry import compute_geometry
from causal_kl.logs import run_script

run_script(lambda s: compute_geometry(s.input.recon, s.input.gold, s.input.sites, s.output.table, s.output.summary,
                                      s.wildcards.route, s.config), snakemake)  # noqa: F821
