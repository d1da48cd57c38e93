"""causal-kl: splice reconstructed hidden states back into a language model and measure what it loses.

All logic lives in this package; the Snakemake rules under ``rules/`` and the thin scripts
under ``workflow_scripts/`` only wire files to these functions.
"""

__version__ = "0.1.0"

from causal_kl.errors import CausalKLError  # noqa: E402,F401

N_OFFSETS = 32
"""Readout offsets 0..31 from the patched position."""


def code_version() -> str:
    """Package version plus the git commit of the checkout it runs from, when there is one. (Here, not in
    ``causal_kl.io``, so that a model job's own process, which sends it to the server, imports no numpy or pyarrow.)"""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
