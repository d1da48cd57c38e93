#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly built env, from the workflow's directory:
# install the causal_kl package itself (its dependencies came from the env file, hence
# --no-deps). Editable, so a code change needs no env rebuild. Point CAUSAL_KL_SRC at the
# checkout when snakemake runs with --directory elsewhere.
set -euo pipefail
src="${CAUSAL_KL_SRC:-$PWD}"
if ! grep -q '^name = "causal-kl"' "$src/pyproject.toml" 2>/dev/null; then
    echo "causal-kl env: no causal-kl checkout at $src; set CAUSAL_KL_SRC to it" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation --quiet -e "$src"
