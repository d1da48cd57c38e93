"""causal-kl: splice reconstructed hidden states back into a language model and measure what it loses.

All logic lives in this package; the Snakemake rules under ``rules/`` and the thin scripts
under ``workflow_scripts/`` only wire files to these functions.
"""

__version__ = "0.1.0"

from causal_kl.errors import CausalKLError  # noqa: E402,F401

N_OFFSETS = 32
"""Readout offsets 0..31 from the patched position."""
