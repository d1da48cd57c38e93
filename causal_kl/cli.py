"""``causal-kl``: small helpers around the Snakemake pipeline.

    causal-kl validate config/gemma3-27b.yaml     # schema check with one-line errors; print the resolved config
    causal-kl provenance results/demo/patch.parquet
"""

from __future__ import annotations

import argparse
import json
import sys

from causal_kl.errors import CausalKLError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="causal-kl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate a config file and print it with defaults filled in")
    v.add_argument("config")
    p = sub.add_parser("provenance", help="print the provenance record stored in an output parquet")
    p.add_argument("path")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "validate":
            from causal_kl.config import config_hash, load_config

            cfg = load_config(args.config)
            print(json.dumps(cfg, indent=2, sort_keys=True))
            print(f"# {args.config}: valid (config hash {config_hash(cfg)})", file=sys.stderr)
        elif args.cmd == "provenance":
            from causal_kl.io import read_provenance

            print(json.dumps(read_provenance(args.path), indent=2, sort_keys=True))
    except CausalKLError as e:
        print(f"causal-kl: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
