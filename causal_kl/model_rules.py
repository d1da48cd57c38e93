"""The model rules: every rule whose jobs load a model, declared once, in ``MODEL_RULES``.

A model rule's job runs in the model server of its GPU slot (``causal_kl.server``), takes a GPU, and on a cluster
shares an allocation (and one model load) with the other jobs of its group (``causal_kl.cluster``). Everything that
needs to know which rules those are reads this table:

- the job layer runs a rule's job in the model server when the rule is here (``causal_kl.jobs.run_rule``);
- the Snakefile gives each grouped rule its cluster group (``causal_kl.workflow_setup.declare_model_groups``);
- ``causal_kl.cluster`` checks a user's ``--groups`` against what each rule loads and knows which rules an
  allocation's Snakemake runs; a local run preloads the model when the plan has a job of the run's model
  (``causal_kl.jobs.gold.preload_plan``).

Two declarations stay where Snakemake and SLURM read them, and ``tests/test_layout.py`` holds them to this table:
the rule's ``resources: **model_resources()`` (its ``gpu`` slot; the parsed workflow's rules with a ``gpu`` resource
are exactly these) and ``profiles/slurm/config.yaml``'s ``set-resources`` (a GPU for exactly these rules).

Adding a model rule: one row here, ``resources: **model_resources()`` and ``threads: MODEL_THREADS`` in the rule, an
entry under the profile's ``set-resources`` (``*model_job`` for a grouped rule).
"""

from __future__ import annotations

from dataclasses import dataclass

LM = "the run's model"
"""What most model rules load: the run's language model (``model.path``)."""

SHARDS, LAYER, RUN = "shards", "layer", "run"
"""How a cluster group packs its jobs into allocations: blocks of shards (``cluster.shards_per_allocation``), one
allocation per point (the ``{layer}`` wildcard), one for the whole run."""

GROUP_PACKING: dict[str, str] = {"extract": SHARDS, "patch": SHARDS, "routes": LAYER, "train": RUN}
"""Each cluster group and how its jobs are packed (``causal_kl.cluster`` describes the groups)."""


@dataclass(frozen=True)
class ModelRule:
    """One model rule: what it loads in the model server (None: no language model, e.g. an SAE alone) and the
    cluster group its jobs join (None: one job per submission, e.g. an NLA rule loading its own checkpoint)."""

    loads: str | None
    group: str | None


MODEL_RULES: dict[str, ModelRule] = {
    "gold": ModelRule(LM, "extract"),
    "span_gold": ModelRule(LM, "extract"),
    "patch_floors": ModelRule(LM, "patch"),
    "patch_route": ModelRule(LM, "patch"),
    "recon_text_channel": ModelRule(LM, "routes"),
    "recon_sae": ModelRule(None, "routes"),
    "recon_span": ModelRule(LM, "routes"),
    "whole_context": ModelRule(LM, "routes"),
    "train_gold": ModelRule(LM, "train"),
    "explain_nla_av": ModelRule("an NLA AV checkpoint", None),
    "recon_nla_ar": ModelRule("an NLA AR checkpoint", None),
}
"""Rule name -> what it loads and its cluster group: the one list of model rules."""


def is_model_rule(rule: str) -> bool:
    """Whether ``rule``'s jobs run in the model server (and take a GPU)."""
    return rule in MODEL_RULES

