"""causal-kl: helpers around the Snakemake pipeline.

  causal-kl validate                               the config `snakemake` would use (config/config.yaml)
  causal-kl validate config/gemma3-27b.yaml        the config `snakemake --configfile config/gemma3-27b.yaml` uses
  causal-kl validate X.yaml --config seed=7        ... with --config overrides, as snakemake applies them
  causal-kl provenance results/demo/L3/span1/patch/floors.parquet   where an output came from (config hash, model, ...)
  causal-kl catalogue --by converter               how much of SAELens' catalogue causal-kl reads, and why not the rest

`validate` runs exactly the checks the workflow runs when it is parsed (schema, the model's config.json,
layer, device, corpus, stored golds and route files) and prints the resolved config; any problem is one
line naming the file, the field and the fix.
"""

from __future__ import annotations

import argparse
import json
import sys

from causal_kl.errors import CausalKLError


def _validate(configfiles: list[str], overrides: list[str], cluster: bool) -> dict:
    from snakemake.cli import parse_config

    from causal_kl.checks import check_run
    from causal_kl.config import DEFAULT_CONFIG, deep_merge, read_yaml, resolve_config, validate_config

    try:
        over = parse_config(overrides)
    except ValueError as e:
        raise CausalKLError("--config", None, str(e), "give entries as KEY=VALUE (VALUE is read as YAML)") from e
    config: dict = {}
    for path in configfiles:  # as snakemake: later files override earlier ones, then --config
        config = deep_merge(config, read_yaml(path))
    config = deep_merge(config, over)
    source = resolve_config(config, configfiles, over, DEFAULT_CONFIG)
    validate_config(config, source)
    check_run(config, source, local_exec=not cluster)
    return config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="causal-kl", description=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a run's config as the workflow does and print it with defaults filled in")
    v.add_argument("configfile", nargs="*", help="the run's --configfile(s); none: config/config.yaml, the demo")
    v.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as snakemake --config")
    v.add_argument("--cluster", action="store_true",
                   help="the jobs will run on cluster nodes: skip the check that this machine has a GPU")
    p = sub.add_parser("provenance", help="print the provenance record stored in an output parquet")
    p.add_argument("path")
    c = sub.add_parser("catalogue", help="count the SAEs of the installed sae-lens' pretrained_saes.yaml causal-kl reads "
                       "(format, model family, hook site) and why the rest are refused",
                       description="Classify every SAE of the installed sae-lens' pretrained_saes.yaml from its metadata "
                       "(causal_kl.catalogue): read, or refused with the reason; print a table and the total.")
    c.add_argument("--by", choices=("release", "converter", "model", "family", "reason"), default="release",
                   help="one row per release (default), conversion_func, model, model family or refusal reason")
    c.add_argument("--refused", action="store_true", help="list every refused SAE with its reason instead of the table")
    c.add_argument("--markdown", action="store_true", help="print the table as Markdown (the README's)")
    c.add_argument("--at-least", type=float, metavar="PERCENT",
                   help="exit 1 (one line on stderr) when less than PERCENT of the catalogue's SAEs are read (#29: 95)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "validate":
            from causal_kl.config import config_hash

            cfg = _validate(args.configfile, args.config, args.cluster)
            print(json.dumps(cfg, indent=2, sort_keys=True))
            name = ", ".join(args.configfile) or "config/config.yaml"
            print(f"# {name}: valid (config hash {config_hash(cfg)})", file=sys.stderr)
        elif args.cmd == "provenance":
            from causal_kl.io import read_parquet, read_provenance

            read_parquet(args.path, columns=[])  # a missing or unreadable file is one line
            record = read_provenance(args.path)
            if not record:
                raise CausalKLError(args.path, "metadata", "no causal_kl provenance record in this parquet file",
                                    "only files the pipeline wrote carry one")
            print(json.dumps(record, indent=2, sort_keys=True))
        elif args.cmd == "catalogue":
            from causal_kl import catalogue

            items = catalogue.entries()
            try:
                if args.refused:
                    print(catalogue.render_refused(items))
                    print(catalogue.total_line(items), file=sys.stderr)
                else:
                    print(catalogue.render(items, args.by, args.markdown))
                sys.stdout.flush()
            except BrokenPipeError:  # `causal-kl catalogue | head`: the reader has seen enough
                import os

                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            read = 100 * sum(e.read for e in items) / max(len(items), 1)
            if args.at_least is not None and read < args.at_least:
                raise CausalKLError(catalogue.saelens_pretrained_file_label(), "saes",
                                    f"causal-kl reads {read:.1f}% of the catalogue's SAEs, less than "
                                    f"--at-least {args.at_least:g}%",
                                    "see causal-kl catalogue --by reason (and --refused) for what is refused and why")
    except CausalKLError as e:
        print(f"causal-kl: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
