"""Route kind ``nla_ar``: the Natural Language Autoencoder's reconstructor (AR, "critic").

Checkpoint directory (HF format): the base model cut to blocks 0..L (``num_hidden_layers =
L + 1``), ``value_head.safetensors`` (a bias-free d x d linear, key ``weight``) and
``nla_meta.yaml`` (``kind: nla_model``, ``role: ar|critic``, ``d_model``,
``extraction.mse_scale``, ``prompt_templates.ar`` or ``.critic`` with ``{explanation}``).

Reconstruction of one explanation: fill the template, tokenize with special tokens (BOS),
run the backbone with its final norm replaced by the identity, take the hidden state of the last
token, apply the value head. That raw vector is the reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from causal_kl.errors import CausalKLError
from causal_kl.io import preview, read_parquet
from causal_kl.models import LoadedModel, load_model
from causal_kl.routes.base import site_ids_for
from causal_kl.routes.nla_meta import check_width, meta_field, read_meta, template

VALUE_HEAD = "value_head.safetensors"


@dataclass
class ARModel:
    """A loaded AR: backbone (final norm = identity), value head ``[d, d]``, template."""

    loaded: LoadedModel
    value_head: nn.Linear
    template: str
    mse_scale: float
    checkpoint: str


def load_ar(checkpoint: str | Path, layer: int, d: int, dtype: str = "float32", device: str = "cpu") -> ARModel:
    """Load and check an AR checkpoint against the run (width ``d``, layer ``layer``)."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint, ("ar", "critic"))
    check_width(meta, checkpoint, d)
    tmpl = template(meta, ("ar", "critic"), "explanation", checkpoint)
    mse_scale = float(meta_field(meta, "extraction.mse_scale", checkpoint, (int, float)))
    head_path = checkpoint / VALUE_HEAD
    if not head_path.exists():
        raise CausalKLError(head_path, None, "value head not found", f"the AR checkpoint needs {VALUE_HEAD} (key 'weight', d x d)")
    loaded = load_model(checkpoint, dtype=dtype, device=device)
    if loaded.n_layers != layer + 1:
        raise CausalKLError(checkpoint / "config.json", "num_hidden_layers",
                            f"the AR backbone has {loaded.n_layers} blocks, a layer-{layer} AR has {layer + 1} (blocks 0..{layer})",
                            "use the AR trained at the run's model.layer")
    if loaded.d_model != d:
        raise CausalKLError(checkpoint / "config.json", "hidden_size", f"{loaded.d_model} != the run's model width {d}",
                            "use the AR trained on the run's model")
    tok = loaded.tokenizer
    probe = tok("x", add_special_tokens=True)["input_ids"]
    if tok.bos_token_id is not None and probe[0] != tok.bos_token_id:
        raise CausalKLError(checkpoint, "tokenizer", "the tokenizer does not add BOS with special tokens",
                            "restore the checkpoint's tokenizer files (the AR was trained with BOS)")
    weights = load_file(str(head_path))
    w = weights.get("weight")
    if w is None or tuple(w.shape) != (d, d):
        raise CausalKLError(head_path, "weight", f"expected a [{d}, {d}] tensor 'weight', found {({k: tuple(v.shape) for k, v in weights.items()})}",
                            "save the value head as nn.Linear(d, d, bias=False).state_dict()")
    head = nn.Linear(d, d, bias=False, dtype=loaded.dtype, device=loaded.device)
    with torch.no_grad():
        head.weight.copy_(w)
    head.requires_grad_(False)
    loaded.decoder.norm = nn.Identity()  # the value head reads the raw block-L output
    return ARModel(loaded=loaded, value_head=head, template=tmpl, mse_scale=mse_scale, checkpoint=str(checkpoint))


@torch.no_grad()
def reconstruct(ar: ARModel, explanations: list[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Explanations -> reconstructions ``[n, d]`` float32 (raw value-head output).

    Batched by length with right padding; the last *real* token of each prompt is read.
    """
    from tqdm import tqdm

    tok = ar.loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    prompts = [ar.template.format(explanation=e) for e in explanations]  # as NLA fills it
    ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(ids), ar.loaded.d_model), dtype=np.float32)
    dev = ar.loaded.device
    for start in tqdm(range(0, len(ids), batch_size), desc="nla_ar", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        lengths = torch.tensor([len(ids[i]) for i in idx], device=dev)
        width = int(lengths.max())
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long, device=dev)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long, device=dev)
        for row, i in enumerate(idx):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i], device=dev)
            attention_mask[row, : len(ids[i])] = 1
        hidden = ar.loaded.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(idx), device=dev), lengths - 1]  # [batch, d]
        out[idx] = ar.value_head(last).float().cpu().numpy()
    return out


def read_explanations(path: str | Path, sites) -> dict[int, str]:
    """site_id -> explanation from a parquet keyed by site_id, doc_id+position or doc_id+n_raw_tokens."""
    table = read_parquet(path)
    if "explanation" not in table.column_names:
        raise CausalKLError(path, "explanation", f"column missing (has {table.column_names})",
                            "write the explanations in a column named 'explanation'")
    ids = site_ids_for(table, sites, path)
    texts = table.column("explanation").to_pylist()
    if any(t is None for t in texts):
        raise CausalKLError(path, "explanation", f"{sum(t is None for t in texts)} null explanations", "write a string per site")
    return dict(zip(ids.tolist(), texts))


def explanations_for_sites(path: str | Path, sites) -> list[str]:
    """The explanation of every eval site, in site order; a site without one is an error."""
    explanations = read_explanations(path, sites)
    site_ids = sites.column("site_id").to_pylist()
    missing = [int(s) for s in site_ids if int(s) not in explanations]
    if missing:
        raise CausalKLError(path, "site_id", f"{len(missing)} eval sites have no explanation (first {preview(missing)})",
                            "write an explanation for every site of the run's sites.parquet")
    return [explanations[int(s)] for s in site_ids]
