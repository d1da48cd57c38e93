# The offline demo assets: a corpus from text shipped with Python, a BPE tokenizer trained on it,
# and a tiny Gemma-3 trained briefly. Only defined when config["demo"] is set; common.smk's
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
