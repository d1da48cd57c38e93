# The offline demo assets: a corpus from text shipped with Python, a BPE tokenizer trained on it,
# a tiny Gemma-3 trained briefly, and a small TopK SAE per sparsity k and layer (the demo's SAE suite).
# Only defined when config["demo"] is set; common.smk's model_input()/corpus_input() then make every
# model/corpus consumer depend on these outputs.

if config.get("demo"):
    DEMO = config["demo"]

    rule demo_corpus:
        output:
            corpus=config["corpus"]["path"],
        log:
            "logs/demo/corpus.log",
        params:
            settings=DEMO["corpus"],
            seed=DEMO["seed"],
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/demo_corpus.py"

    rule demo_tokenizer:
        input:
            corpus=config["corpus"]["path"],
        output:
            tokenizer=directory("resources/demo/tokenizer"),
        log:
            "logs/demo/tokenizer.log",
        params:
            settings=DEMO["tokenizer"],
            data=DEMO["data"],
            column=config["corpus"]["column"],
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/demo_tokenizer.py"

    rule demo_model:
        input:
            corpus=config["corpus"]["path"],
            tokenizer="resources/demo/tokenizer",
        output:
            model=directory(MODEL["path"]),
            training="resources/demo/training.json",
        log:
            "logs/demo/model.log",
        params:
            architecture=DEMO["model"],
            train=DEMO["train"],
            data=DEMO["data"],
            seed=DEMO["seed"],
            column=config["corpus"]["column"],
        threads: DEMO["train"]["threads"]
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/demo_model.py"

    rule demo_sae:
        wildcard_constraints:
            k=_alternatives(demo_sae_ks(config)),
        input:
            train_gold=lambda w: fill(
                P.train_gold, layer=w.layer, start=DEMO["sae"]["train_rows"][0], stop=DEMO["sae"]["train_rows"][1]
            ),
        output:
            sae=directory(demo_sae_dir("{k}", "{layer}")),
        log:
            "logs/demo/sae_k{k}_L{layer}.log",
        params:
            settings={key: DEMO["sae"][key] for key in sorted(DEMO["sae"]) if key not in ("k", "sublayer")},
            seed=DEMO["seed"],
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/demo_sae.py"

    rule demo_sublayer_sae:
        wildcard_constraints:
            kind="|".join(DEMO_SUBLAYER_KINDS),
        input:
            train_gold=demo_sublayer_golds("target"),
            train_gold_in=demo_sublayer_golds("input"),
        output:
            sae=directory(demo_sae_dir("{kind}", "{layer}", prefix="")),
        log:
            "logs/demo/sae_{kind}_L{layer}.log",
        params:
            settings={key: DEMO["sae"][key] for key in sorted(DEMO["sae"]) if key not in ("k", "sublayer")},
            sublayer=DEMO["sae"].get("sublayer"),
            seed=DEMO["seed"],
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/demo_sublayer_sae.py"
