# The offline demo assets: a corpus from text shipped with Python, a BPE tokenizer trained on it,
# a tiny Gemma-3 trained briefly, and one small TopK SAE per layer (the demo's `sae` route). Only defined when config["demo"] is set; common.smk's
# model_input()/corpus_input() then make every model/corpus consumer depend on these outputs.

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
        input:
            train_gold=lambda w: f"{R}/L{w.layer}/train_gold/rows_{DEMO['sae']['train_rows'][0]}_{DEMO['sae']['train_rows'][1]}.parquet",
        output:
            sae=directory(f"{DEMO_SAE_DIR}/L{{layer}}"),
        log:
            "logs/demo/sae_L{layer}.log",
        params:
            settings=DEMO["sae"],
            seed=DEMO["seed"],
        conda:
            "../envs/torch.yaml"
        script:
            "../workflow_scripts/demo_sae.py"
