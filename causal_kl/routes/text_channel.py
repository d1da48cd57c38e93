"""Route kind ``text_channel``: the demo's stand-in for an NLA, with a real text bottleneck.

Verbaliser: the logit lens at layer L. A gold ``g`` goes through the model's final norm, LM
head and soft-cap, and the ``top_k`` tokens (most likely first) are written out as text, a JSON
list of the tokenizer's token strings, e.g. ``["the", "Ġmodel", "."]`` (token strings, not decoded
text: two byte-level tokens that decode to the same partial character stay distinct).

Reconstructor: sees only that text. It parses the list back into strings and maps them to
rank-weighted bag-of-token features (weight ``1 / (rank + 1)`` per string of its training
vocabulary), then ridge regression (``ridge_alpha``) with an intercept onto the gold. It is fit on
the golds of training documents disjoint from the eval documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from causal_kl.models import LoadedModel


@torch.no_grad()
def verbalise(loaded: LoadedModel, gold: np.ndarray, top_k: int, batch_size: int = 256) -> list[str]:
    """Logit-lens text of each gold ``[n, d]``: JSON list of the ``top_k`` token strings, most likely first."""
    texts: list[str] = []
    tok = loaded.tokenizer
    for i in range(0, len(gold), batch_size):
        h = torch.tensor(np.asarray(gold[i:i + batch_size]), dtype=loaded.dtype, device=loaded.device)  # [batch, d]
        top = loaded.logits(h).float().topk(top_k, dim=-1).indices.cpu().tolist()
        texts += [json.dumps(tok.convert_ids_to_tokens(row), ensure_ascii=False) for row in top]
    return texts


def parse(text: str) -> list[str]:
    """The token strings of an explanation; text that is not a JSON list reads as no tokens."""
    try:
        items = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return []
    return [str(x) for x in items] if isinstance(items, list) else []


@dataclass
class TextReconstructor:
    """Ridge regression from rank-weighted bag-of-token features of the text to the vector."""

    vocab: dict[str, int]
    weights: np.ndarray  # [n_features, d]
    intercept: np.ndarray  # [d]

    @staticmethod
    def features(texts: list[str], vocab: dict[str, int]) -> np.ndarray:
        """``[n, n_features]``: weight 1/(rank+1) of each known token string in each text."""
        x = np.zeros((len(texts), len(vocab)), dtype=np.float64)
        for i, text in enumerate(texts):
            for rank, item in enumerate(parse(text)):
                j = vocab.get(item)
                if j is not None:
                    x[i, j] += 1.0 / (rank + 1)
        return x

    @classmethod
    def fit(cls, texts: list[str], targets: np.ndarray, alpha: float) -> "TextReconstructor":
        """Fit on training texts and their golds ``targets [m, d]`` (closed-form ridge, centred)."""
        vocab: dict[str, int] = {}
        for text in texts:
            for item in parse(text):
                vocab.setdefault(item, len(vocab))
        x = cls.features(texts, vocab)
        y = np.asarray(targets, dtype=np.float64)
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        xc, yc = x - x_mean, y - y_mean
        m, p = xc.shape
        if p <= m:
            w = np.linalg.solve(xc.T @ xc + alpha * np.eye(p), xc.T @ yc)
        else:  # dual form: fewer rows than features
            w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(m), yc)
        return cls(vocab=vocab, weights=w, intercept=y_mean - x_mean @ w)

    def predict(self, texts: list[str]) -> np.ndarray:
        """Texts -> vectors ``[n, d]`` (float32)."""
        return (self.features(texts, self.vocab) @ self.weights + self.intercept).astype(np.float32)


def reconstruct(loaded: LoadedModel, train: np.ndarray, gold: np.ndarray, top_k: int = 8,
                ridge_alpha: float = 1.0) -> tuple[list[str], np.ndarray, TextReconstructor]:
    """Verbalise training and eval golds, fit the reconstructor on training text, reconstruct eval golds from text.

    ``train [m, d]``, ``gold [n, d]``; returns the eval texts, their reconstructions ``[n, d]``
    float32 and the fitted reconstructor.
    """
    train_texts = verbalise(loaded, train, top_k)
    eval_texts = verbalise(loaded, gold, top_k)
    reconstructor = TextReconstructor.fit(train_texts, train, ridge_alpha)
    return eval_texts, reconstructor.predict(eval_texts), reconstructor
