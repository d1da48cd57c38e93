"""Tiny checkpoints built by the tests themselves, in the formats real runs use.

Each builder writes a ``save_pretrained`` folder (config.json, model.safetensors, tokenizer)
so it loads through exactly the code path of a real model.
"""

from __future__ import annotations

import importlib.util
import random
import sys
import string
from pathlib import Path

import numpy as np
import pandas as pd
import torch

WORDS = [
    "the", "model", "reads", "a", "state", "and", "writes", "its", "next", "token", "layer", "window",
    "attention", "cache", "prefix", "patch", "noise", "gold", "site", "document", "offset", "loss",
    "of", "to", "in", "is", "for", "with", "on", "that", "by", "this", "we", "it", "as", "at", "from",
    "0", "1", "2", "3", "42", "1000", "2048",
]


def load_benchmark(name: str):
    """``benchmarks/{name}.py`` imported as a module named ``name`` (the benchmarks are scripts, not a package; the
    module is registered in ``sys.modules`` before it runs, as its dataclasses need)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_texts(n_docs: int, n_words: tuple[int, int] = (250, 400), seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n_docs):
        n = rng.randint(*n_words)
        words = [rng.choice(WORDS) for _ in range(n)]
        for i in range(0, n, rng.randint(7, 15)):
            words[i] = words[i].capitalize() + "."
        out.append(" ".join(words))
    return out


def write_corpus(path: Path, n_docs: int = 30, column: str = "content", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({column: make_texts(n_docs, seed=seed)}).to_parquet(path)
    return path


def make_tokenizer(vocab_size: int = 256):
    """A byte-level BPE tokenizer with Gemma-like <bos>/<eos>/<pad>, trained on fixture text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(make_texts(40, seed=123) + [string.printable], trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def _finish(model, tokenizer, path: Path, boost_norm: float | None, norm=None) -> Path:
    """Raise the final norm's weight to ``boost_norm`` (``norm``: the final norm, by default the decoder's
    ``.norm``), then save model and tokenizer."""
    if boost_norm is not None:
        with torch.no_grad():
            if norm is None:
                norm = model.get_decoder().norm if hasattr(model, "get_decoder") else model.model.norm
            norm.weight.fill_(boost_norm)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def gemma3_text_config(vocab_size: int, **kw):
    from transformers import Gemma3TextConfig

    args = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=24,
        max_position_embeddings=1024, final_logit_softcapping=30.0, query_pre_attn_scalar=16,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
    )
    args.update(kw)
    return Gemma3TextConfig(**args)


def tiny_gemma3_text(path: Path, seed: int = 0, boost_norm: float | None = 40.0, **kw) -> Path:
    """Gemma3ForCausalLM: 6 blocks (2 sliding : 1 full), window 24, soft-cap 30.

    The final norm's weight is raised so the logits reach about +-30 and the soft-cap is active
    (with plain random init they stay near +-5 and barely exercise it).
    """
    from transformers import Gemma3ForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(gemma3_text_config(len(tokenizer), **kw))
    return _finish(model, tokenizer, path, boost_norm)


def tiny_gemma3_multimodal(path: Path, seed: int = 0, boost_norm: float | None = 40.0) -> Path:
    """Gemma3ForConditionalGeneration (the production checkpoint's class) with a tiny vision tower."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    tokenizer = make_tokenizer()
    text = gemma3_text_config(len(tokenizer) + 8)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                       image_token_index=len(tokenizer) + 4, boi_token_index=len(tokenizer) + 5,
                       eoi_token_index=len(tokenizer) + 6)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg)
    if boost_norm is not None:
        with torch.no_grad():
            model.model.language_model.norm.weight.fill_(boost_norm)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _tiny_plain_decoder(path: Path, config_cls, model_cls, seed: int, boost_norm: float | None) -> Path:
    """A 4-block Llama-style decoder (one rotary embedding, no sliding window, no soft-cap)."""
    tokenizer = make_tokenizer()
    cfg = config_cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                     pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    return _finish(model_cls(cfg), tokenizer, path, boost_norm)


def tiny_llama(path: Path, seed: int = 0, boost_norm: float | None = 6.0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny_plain_decoder(path, LlamaConfig, LlamaForCausalLM, seed, boost_norm)


def tiny_qwen2(path: Path, seed: int = 0, boost_norm: float | None = 6.0) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _tiny_plain_decoder(path, Qwen2Config, Qwen2ForCausalLM, seed, boost_norm)


def random_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def lay_out_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str | None = None,
                      ref: str | None = "main") -> str:
    """Put ``files`` ({path in the repo: content}) into a Hugging Face hub cache as huggingface_hub's downloads do:
    ``models--org--name/blobs/<sha256>``, ``snapshots/<commit>/<path>`` a relative symlink to its blob, and
    ``refs/<ref>`` holding the commit (no ref: a snapshot only a pinned revision reaches). Returns the commit
    (40 hex digits; by default a hash of the files, so other files are another commit)."""
    import hashlib
    import os

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    if commit is None:
        h = hashlib.sha1()
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


# ------------------------------------------------------------------ SAE files in the formats of sae_dictionary
def torch_save_bytes(obj) -> bytes:
    """``torch.save(obj)``'s bytes (the zip format the hub's ``.pt`` files are in)."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def dictionary_learning_state(cls: str, rng, d_in: int, d_sae: int, k: int = 6) -> tuple[dict, int | None]:
    """``(ae.pt's state dict, the trainer's k or None)`` as dictionary_learning's class ``cls`` saves it: its own
    tensor names and layouts (``encoder.weight [d_sae, d_in]`` or ``W_enc [d_in, d_sae]``, ...)."""
    t = lambda *shape, s=0.5: torch.from_numpy(rng.normal(0, s, shape).astype(np.float32))  # noqa: E731
    if cls == "AutoEncoder":
        return {"bias": t(d_in), "encoder.weight": t(d_sae, d_in), "encoder.bias": t(d_sae, s=0.3),
                "decoder.weight": t(d_in, d_sae)}, None
    if cls == "GatedAutoEncoder":
        return {"decoder_bias": t(d_in), "r_mag": t(d_sae, s=0.3), "gate_bias": t(d_sae, s=0.3),
                "mag_bias": t(d_sae, s=0.3), "encoder.weight": t(d_sae, d_in), "decoder.weight": t(d_in, d_sae)}, None
    if cls == "AutoEncoderTopK":  # k and a threshold are saved too; TopK's encode reads only k (the trainer's)
        return {"encoder.weight": t(d_sae, d_in), "encoder.bias": t(d_sae, s=0.3), "decoder.weight": t(d_in, d_sae),
                "b_dec": t(d_in), "k": torch.tensor(k), "threshold": torch.tensor(0.4)}, k
    if cls == "BatchTopKSAE":  # inference: one threshold, a scalar
        return {"encoder.weight": t(d_sae, d_in), "encoder.bias": t(d_sae, s=0.3), "decoder.weight": t(d_in, d_sae),
                "b_dec": t(d_in), "k": torch.tensor(k), "threshold": torch.tensor(0.7)}, k
    if cls == "MatryoshkaBatchTopKSAE":
        return {"W_enc": t(d_in, d_sae), "b_enc": t(d_sae, s=0.3), "W_dec": t(d_sae, d_in), "b_dec": t(d_in),
                "k": torch.tensor(k), "threshold": torch.tensor(0.6),
                "group_sizes": torch.tensor([d_sae // 3, d_sae - d_sae // 3])}, k
    if cls == "JumpReluAutoEncoder":
        return {"W_enc": t(d_in, d_sae), "b_enc": t(d_sae, s=0.3), "W_dec": t(d_sae, d_in), "b_dec": t(d_in),
                "threshold": torch.from_numpy(rng.uniform(0.05, 0.8, d_sae).astype(np.float32))}, None
    raise ValueError(cls)


def dictionary_learning_config(cls: str, layer: int, k: int | None, d_in: int, d_sae: int, submodule: str | None = None,
                               lm_name: str = "EleutherAI/pythia-70m-deduped") -> bytes:
    """The ``config.json`` dictionary_learning's trainer writes beside ``ae.pt`` (``trainer`` and ``buffer``)."""
    import json

    trainer = {"dict_class": cls, "trainer_class": cls.replace("AutoEncoder", "Trainer"), "activation_dim": d_in,
               "dict_size": d_sae, "layer": layer, "lm_name": lm_name, "lr": 1e-3,
               "submodule_name": submodule or f"resid_post_layer_{layer}"}
    if k is not None:
        trainer["k"] = k
    return json.dumps({"trainer": trainer, "buffer": {"d_submodule": d_in, "io": "out", "n_ctxs": 100, "ctx_len": 128,
                                                      "refresh_batch_size": 8, "out_batch_size": 64}}).encode()


def qwen_scope_state(rng, d_in: int, d_sae: int) -> dict:
    """``layer{L}.sae.pt`` as Qwen-Scope keeps it: ``W_enc [d_sae, d_in]``, ``W_dec [d_in, d_sae]`` (both transposed
    from SAELens' layout), ``b_enc``, ``b_dec``."""
    f = lambda *shape, s: torch.from_numpy(rng.normal(0, s, shape).astype(np.float32))  # noqa: E731
    return {"W_enc": f(d_sae, d_in, s=0.5), "b_enc": f(d_sae, s=0.3), "W_dec": f(d_in, d_sae, s=0.2),
            "b_dec": f(d_in, s=0.5)}


LINEAR_SAE_NAMES = {"goodfire": ("encoder_linear", "decoder_linear"), "deepseek_r1": ("encoder", "decoder")}
"""The one-file formats kept as two ``nn.Linear``s: the names of the encoder's and the decoder's."""


def linear_sae_state(format: str, rng, d_in: int, d_sae: int) -> dict:
    """A Goodfire or DeepSeek-R1 SAE's state dict: ``nn.Linear`` layouts, encoder ``[d_sae, d_in]``, decoder
    ``[d_in, d_sae]``, their biases."""
    f = lambda *shape, s: torch.from_numpy(rng.normal(0, s, shape).astype(np.float32))  # noqa: E731
    enc, dec = LINEAR_SAE_NAMES[format]
    return {f"{enc}.weight": f(d_sae, d_in, s=0.5), f"{enc}.bias": f(d_sae, s=0.3),
            f"{dec}.weight": f(d_in, d_sae, s=0.5), f"{dec}.bias": f(d_in, s=0.5)}


# ---------------------------------------------------------------------- SAE files in the formats of sae_scope
def _safetensors_bytes(tensors: dict) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()})


def llama_scope_files(rng, folder: str, hook: str, d_in: int, d_sae: int, norm_scaling_factor: float) -> dict[str, bytes]:
    """A Llama Scope SAE's folder (``{path in the repo: bytes}``): ``hyperparams.json`` (``hook_point_in`` = ``_out``
    = ``hook``, e.g. ``blocks.3.hook_resid_post``; a dataset-average norm that makes SAELens' factor
    ``norm_scaling_factor``) and ``checkpoints/final.safetensors`` (``nn.Linear`` layouts)."""
    import json
    import math

    n = lambda *shape: rng.normal(0, 0.3, shape)  # noqa: E731
    norm = math.sqrt(d_in) / norm_scaling_factor
    hyper = {"d_model": d_in, "d_sae": d_sae, "hook_point_in": hook, "hook_point_out": hook,
             "jump_relu_threshold": 0.004, "act_fn": "jumprelu", "dataset_average_activation_norm": {"in": norm, "out": norm},
             "top_k": 50}
    return {f"{folder}/hyperparams.json": json.dumps(hyper).encode(),
            f"{folder}/checkpoints/final.safetensors": _safetensors_bytes({
                "encoder.weight": n(d_sae, d_in), "encoder.bias": n(d_sae), "decoder.weight": n(d_in, d_sae),
                "decoder.bias": n(d_in)})}


def llama_scope_r1_files(rng, folder: str, hook: str, d_in: int, d_sae: int) -> dict[str, bytes]:
    """A Llama Scope R1-distill SAE's folder: ``config.json`` (``expansion_factor``, no dataset norm: the catalogue's
    factor says it) and ``sae_weights.safetensors`` (with ``log_jumprelu_threshold``)."""
    import json

    n = lambda *shape: rng.normal(0, 0.3, shape)  # noqa: E731
    cfg = {"d_model": d_in, "expansion_factor": d_sae // d_in, "hook_point_in": hook, "hook_point_out": hook,
           "act_fn": "jumprelu"}
    return {f"{folder}/config.json": json.dumps(cfg).encode(),
            f"{folder}/sae_weights.safetensors": _safetensors_bytes({
                "encoder.weight": n(d_sae, d_in), "encoder.bias": n(d_sae), "decoder.weight": n(d_in, d_sae),
                "decoder.bias": n(d_in), "log_jumprelu_threshold": np.log(rng.uniform(0.05, 0.6, d_sae))})}


def mwhanna_transcoder_files(rng, path: str, d_in: int, d_sae: int, wandb_name: str = "wandb-config.yaml",
                             model_name: str | None = None) -> dict[str, bytes]:
    """An mwhanna transcoder: ``layer_L.safetensors`` (``path``; ``W_enc [d_sae, d_in]``, ``W_dec [d_sae, d_in]``)
    beside the repo's ``wandb_name`` (``d_model``, ``d_feature``) and, given ``model_name``, its ``config.yaml``."""
    n = lambda *shape: rng.normal(0, 0.3, shape)  # noqa: E731
    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    wandb = f"d_model:\n  value: {d_in}\nd_feature:\n  value: {d_sae}\nbatch_size:\n  value: 1024\n".encode()
    files = {path: _safetensors_bytes({"W_enc": n(d_sae, d_in), "b_enc": n(d_sae), "W_dec": n(d_sae, d_in),
                                       "b_dec": n(d_in)}),
             folder + wandb_name: wandb}
    if model_name is not None:
        files[folder + "config.yaml"] = f"model_name: {model_name}\n".encode()
    return files


def gemma_scope_npz(rng, d_in: int, d_sae: int, d_out: int | None = None) -> bytes:
    """Gemma Scope's ``params.npz`` (gemma-2's SAEs and transcoders): ``W_enc [d_in, d_sae]``, ``W_dec [d_sae,
    d_out]``, ``b_enc``, ``b_dec``, ``threshold``."""
    import io

    d_out = d_in if d_out is None else d_out
    n = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    buf = io.BytesIO()
    np.savez(buf, W_enc=n(d_in, d_sae), W_dec=n(d_sae, d_out), b_enc=n(d_sae), b_dec=n(d_out),
             threshold=rng.uniform(0.05, 0.6, d_sae).astype(np.float32))
    return buf.getvalue()


def hook_z_files(rng, path: str, layer: int, d_in: int, d_sae: int, legacy: bool = False) -> dict[str, bytes]:
    """Connor & Rob's hook_z SAE: ``<name>.pt`` (``path``; a pickled state dict, torch < 1.6's format if
    ``legacy``) beside ``<name>_cfg.json`` (``act_name`` ``blocks.L.attn.hook_z``)."""
    import io
    import json

    n = lambda *shape: rng.normal(0, 0.3, shape)  # noqa: E731
    cfg = {"act_size": d_in, "dict_size": d_sae, "act_name": f"blocks.{layer}.attn.hook_z", "model_name": "gpt2-small",
           "site": "z", "layer": layer, "concat_heads": True}
    state = {"W_enc": n(d_in, d_sae), "b_enc": n(d_sae), "W_dec": n(d_sae, d_in), "b_dec": n(d_in)}
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}, buf,
               _use_new_zipfile_serialization=not legacy)
    return {path: buf.getvalue(), path.split(".pt")[0] + "_cfg.json": json.dumps(cfg).encode()}


# ----------------------------------------------------------------------------- the other families SAE users score
def tiny_qwen3(path: Path, seed: int = 0, boost_norm: float | None = 20.0) -> Path:
    """Qwen3ForCausalLM: Llama-style, with q/k norms inside attention."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = make_tokenizer()
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    return _finish(Qwen3ForCausalLM(cfg), tokenizer, path, boost_norm)


def tiny_mistral(path: Path, seed: int = 0, boost_norm: float | None = 20.0, sliding_window: int | None = 24) -> Path:
    """MistralForCausalLM with a sliding window (24 < the documents) in every block and no ``layer_types``."""
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = make_tokenizer()
    cfg = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                        sliding_window=sliding_window, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    return _finish(MistralForCausalLM(cfg), tokenizer, path, boost_norm)


def tiny_gemma2(path: Path, seed: int = 0, boost_norm: float | None = 40.0, attn_softcap: float = 5.0) -> Path:
    """Gemma2ForCausalLM: 6 blocks alternating sliding (window 24) and global, attention-logit soft-cap, final soft-cap 30.

    The final norm is raised (logits reach about +-30: the final cap is active) and the query/key
    projections scaled up so that attention logits reach the attention soft-cap (``attn_softcap``);
    with plain random init both caps would barely bend anything.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tokenizer = make_tokenizer()
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=24,
                       max_position_embeddings=1024, final_logit_softcapping=30.0, attn_logit_softcapping=attn_softcap,
                       query_pre_attn_scalar=16, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.q_proj.weight.mul_(6.0)
            block.self_attn.k_proj.weight.mul_(6.0)
    return _finish(model, tokenizer, path, boost_norm)


def tiny_gpt2(path: Path, seed: int = 0, boost_norm: float | None = 30.0) -> Path:
    """GPT2LMHeadModel: learned absolute positions, Conv1D projections, LayerNorm, tied head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = make_tokenizer()
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=4, n_inner=128, n_positions=1024,
                     pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    return _finish(model, tokenizer, path, boost_norm, norm=model.transformer.ln_f)


def tiny_gpt_neox(path: Path, seed: int = 0, boost_norm: float | None = 30.0) -> Path:
    """GPTNeoXForCausalLM (Pythia's class): parallel residual, partial rotary (``rotary_pct`` 0.25, as Pythia).

    The fused q/k/v projection is scaled up so that attention is sharp enough for the rotated quarter of each
    head to matter (with plain random init, positions given wrongly move KL by only ~0.01 nats)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = make_tokenizer()
    cfg = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                        num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=True, max_position_embeddings=1024,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for block in model.gpt_neox.layers:
            block.attention.query_key_value.weight.mul_(4.0)
    return _finish(model, tokenizer, path, boost_norm, norm=model.gpt_neox.final_layer_norm)


FAMILY_BUILDERS = {"gemma2": tiny_gemma2, "gpt2": tiny_gpt2, "gpt_neox": tiny_gpt_neox, "mistral": tiny_mistral,
                   "qwen3": tiny_qwen3}
"""The families added for SAE users' models, by config.json ``model_type`` (conftest: ``family_dir``)."""


# ----------------------------------------------------------------------------- the families of SAELens' other releases
def tiny_gemma(path: Path, seed: int = 0, boost_norm: float | None = 20.0) -> Path:
    """GemmaForCausalLM (Gemma 1, gemma-2b's class): Llama-style blocks, embeddings scaled by sqrt(d), one kv head
    (gemma-2b's multi-query attention), a head_dim wider than hidden / heads, tied head. Weights rescaled (embeddings down, query/key
    projections and the MLP's output up) so that random blocks matter against the sqrt(d)-scaled embeddings."""
    from transformers import GemmaConfig, GemmaForCausalLM

    tokenizer = make_tokenizer()
    cfg = GemmaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = GemmaForCausalLM(cfg)
    with torch.no_grad():  # so that the blocks, their MLPs and positions move the logits (the tests' traps)
        model.model.embed_tokens.weight.div_(2.5)  # scaled by sqrt(d) on the way in: the residual would drown the blocks
        for block in model.model.layers:
            block.self_attn.q_proj.weight.mul_(8.0)  # sharp attention: positions given wrongly move KL
            block.self_attn.k_proj.weight.mul_(8.0)
            block.mlp.down_proj.weight.mul_(6.0)
    return _finish(model, tokenizer, path, boost_norm)


def tiny_qwen3_moe(path: Path, seed: int = 0, boost_norm: float | None = 20.0) -> Path:
    """Qwen3MoeForCausalLM: 4 experts, 2 per token, and one dense block (``mlp_only_layers``), as Qwen3-30B-A3B's
    blocks but tiny."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tokenizer = make_tokenizer()
    cfg = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                         num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1], num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    return _finish(Qwen3MoeForCausalLM(cfg), tokenizer, path, boost_norm)


def _qwen3_5_text(cls, vocab_size: int, **kw):
    args = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, linear_num_key_heads=2,
                linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
                layer_types=["linear_attention", "full_attention"] * 2, max_position_embeddings=1024,
                pad_token_id=0, eos_token_id=1, bos_token_id=2)
    args.update(kw)
    return cls(**args)


def tiny_qwen3_5(path: Path, seed: int = 0, boost_norm: float | None = 20.0) -> Path:
    """Qwen3_5ForConditionalGeneration (Qwen3.5's checkpoints' class: a vision tower beside the text decoder, which
    sits under ``model.language_model``): Gated DeltaNet (linear-attention) blocks beside full-attention ones."""
    from transformers.models.qwen3_5 import (Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig,
                                             Qwen3_5VisionConfig)

    tokenizer = make_tokenizer()
    text = _qwen3_5_text(Qwen3_5TextConfig, len(tokenizer))
    vision = Qwen3_5VisionConfig(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                                 patch_size=14, temporal_patch_size=2, spatial_merge_size=2)
    cfg = Qwen3_5Config(text_config=text.to_dict(), vision_config=vision.to_dict())
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(cfg)
    return _finish(model, tokenizer, path, boost_norm, norm=model.model.language_model.norm)


def tiny_qwen3_5_moe(path: Path, seed: int = 0, boost_norm: float | None = 20.0) -> Path:
    """Qwen3_5MoeForCausalLM (the text decoder alone): linear-attention and full-attention blocks, each with a
    mixture of 4 experts (2 per token) and a gated shared expert."""
    from transformers.models.qwen3_5_moe import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    tokenizer = make_tokenizer()
    cfg = _qwen3_5_text(Qwen3_5MoeTextConfig, len(tokenizer), moe_intermediate_size=32,
                        shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    torch.manual_seed(seed)
    return _finish(Qwen3_5MoeForCausalLM(cfg), tokenizer, path, boost_norm)


def tiny_gpt_oss(path: Path, seed: int = 0, boost_norm: float | None = 20.0) -> Path:
    """GptOssForCausalLM: attention sinks (a learned logit per head in every softmax), sliding (window 24) and
    global blocks alternating (block 3, the first a splice at layer 2 reruns, slides), YaRN rotary, 4 experts (2 per token) in every block.

    The sinks are raised to about the attention logits' scale so that they take a real share of each softmax
    (their random init, std 0.02, would barely move anything), and the query/key projections scaled up."""
    from transformers import GptOssConfig, GptOssForCausalLM

    tokenizer = make_tokenizer()
    cfg = GptOssConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                       num_experts_per_tok=2, sliding_window=24, max_position_embeddings=131072,
                       layer_types=["full_attention", "sliding_attention"] * 2,
                       pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(seed)
    model = GptOssForCausalLM(cfg)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.sinks.normal_(0.0, 2.0)
            block.self_attn.q_proj.weight.mul_(4.0)  # sharper attention: YaRN's positions matter (the positions trap)
            block.self_attn.k_proj.weight.mul_(4.0)
    return _finish(model, tokenizer, path, boost_norm)


FAMILY_BUILDERS.update({"gemma": tiny_gemma, "qwen3_moe": tiny_qwen3_moe, "qwen3_5": tiny_qwen3_5,
                        "qwen3_5_moe": tiny_qwen3_5_moe, "gpt_oss": tiny_gpt_oss})
