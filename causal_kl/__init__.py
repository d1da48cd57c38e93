"""causal-kl: splice reconstructed hidden states back into a language model and measure what it loses.

All logic lives in this package; the Snakemake rules under ``rules/`` and the thin scripts
under ``workflow_scripts/`` only wire files to these functions.
"""

__version__ = "0.1.0"

from causal_kl.errors import CausalKLError  # noqa: E402,F401

CONDITIONS = (
    "clean",
    "gold",
    "recon_goldnorm",
    "recon_rawnorm",
    "noise_matched",
    "resample_same_doc",
    "resample_cross_doc",
    "zero",
    "mean",
)
"""The nine conditions of the design card; their names are the API."""

FLOOR_CONDITIONS = ("gold", "resample_same_doc", "resample_cross_doc", "zero", "mean")
"""Route-independent conditions: computed once per run and shared by every route."""

ROUTE_CONDITIONS = ("recon_goldnorm", "recon_rawnorm", "noise_matched")
"""Conditions computed per route."""

N_OFFSETS = 32
"""Readout offsets 0..31 from the patched position."""
