"""The demo SAE: a small TopK sparse autoencoder trained on the demo's golds, saved in SAELens' format.

TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), trained the way SAELens'
``TopKTrainingSAE`` is, in miniature:

* inputs are scaled by ``f = sqrt(d) / mean ||x||`` over the training golds (SAELens'
  ``normalize_activations="expected_average_only_in"``); at the end ``f`` is folded into the
  weights (``W_enc *= f``, ``W_dec /= f``, ``b_dec /= f``, as SAELens'
  ``fold_activation_norm_scaling_factor``), so the saved SAE reads raw golds and its
  ``cfg.json`` says ``normalize_activations: none``;
* ``b_dec`` starts at the mean scaled gold, ``W_dec`` rows at random unit vectors,
  ``W_enc = W_dec.T``; decoder rows are kept at unit norm after every step;
* loss: ``||x - x_hat||^2`` summed over dimensions, mean over the batch, plus SAELens' AuxK
  loss (``calculate_topk_aux_loss``): the ``k_aux = d // 2`` largest pre-activations of latents
  that have not fired for ``dead_steps`` steps reconstruct the residual ``x - x_hat``, weighted
  by ``aux_coefficient * min(n_dead / k_aux, 1)``; Adam, a constant learning rate with a linear
  decay over the last fifth of the steps.

Everything random comes from one ``torch.Generator`` seeded with ``seed``; the global RNG and the
thread count are not touched, so two trainings in one process (same thread count) give identical
weights. The saved ``cfg.json`` names the hook ``blocks.{layer}.hook_resid_post`` (the design's
layer = output of block ``layer``), ``d_in``, ``d_sae`` and ``k``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from causal_kl.hooks import RESID_POST, Point
from causal_kl.sae import SparseAutoencoder, explained_variance, save_sae

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAETrainConfig:
    """Shape and optimisation of the demo SAE."""

    expansion: int = 2  # d_sae = expansion * d
    k: int = 16
    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    aux_coefficient: float = 1 / 32
    dead_steps: int = 100  # a latent that has not fired for this many steps counts as dead for AuxK
    seed: int = 0


@dataclass(frozen=True)
class SAETrainReport:
    """What a training did (all on the training golds)."""

    n_train: int
    d_in: int
    d_sae: int
    k: int
    steps: int
    seconds: float
    norm_scaling_factor: float  # folded into the saved weights
    final_mse: float  # last-step MSE per vector, scaled units
    explained_variance: float  # SAELens' definition, raw golds
    l0: float
    dead_share: float


def _optimise(params: dict[str, torch.Tensor], cfg: SAETrainConfig, n: int, gen: torch.Generator,
              loss_of) -> torch.Tensor:
    """Adam over ``params`` for ``cfg.steps`` steps: a batch of ``cfg.batch_size`` of the ``n`` rows drawn from ``gen``
    each step, ``loss_of(indices) -> (loss, mse)`` minimised, a constant learning rate then a linear decay over the
    last fifth, ``W_dec``'s rows put back to unit norm after every step. Returns the last step's MSE."""
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=cfg.lr)
    decay_from = int(cfg.steps * 0.8)
    mse = torch.tensor(float("nan"))
    for step in range(cfg.steps):
        lr = cfg.lr if step < decay_from else cfg.lr * (cfg.steps - step) / (cfg.steps - decay_from)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        loss, mse = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True)
    return mse


def train_topk_sae(golds: np.ndarray, layer: int, config: SAETrainConfig = SAETrainConfig(),
                   model_name: str | None = None, hook: str = RESID_POST) -> tuple[SparseAutoencoder, SAETrainReport]:
    """Train a TopK SAE on ``golds [n, d]`` (float32, CPU; the activations at ``hook`` of block ``layer``) and return
    it (reading raw golds, its cfg.json naming that hook as SAELens does: ``blocks.L.attn.hook_z`` with
    ``reshape_activations: hook_z`` for the heads' outputs) and a report."""
    cfg = config
    x = torch.from_numpy(np.array(golds, dtype=np.float32))  # a copy: Arrow-backed golds are read-only
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"golds must be [n >= 2, d], got {tuple(x.shape)}")
    n, d = x.shape
    d_sae = cfg.expansion * d
    k = min(cfg.k, d_sae)
    k_aux = max(d // 2, 1)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)

    scale = float(d ** 0.5 / x.norm(dim=1).mean())
    xs = x * scale
    W_dec = torch.randn(d_sae, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {
        "W_dec": W_dec,
        "W_enc": W_dec.T.clone(),
        "b_enc": torch.zeros(d_sae),
        "b_dec": xs.mean(dim=0).clone(),
    }
    steps_since_fired = torch.zeros(d_sae, dtype=torch.long)

    def loss_of(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal steps_since_fired
        batch = xs[idx]  # [b, d]
        pre = (batch - params["b_dec"]) @ params["W_enc"] + params["b_enc"]  # [b, d_sae]
        values, indices = torch.topk(pre, k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        recon = acts @ params["W_dec"] + params["b_dec"]
        residual = batch - recon
        mse = residual.pow(2).sum(dim=-1).mean()
        loss = mse
        with torch.no_grad():
            fired = (acts > 0).any(dim=0)
            steps_since_fired = torch.where(fired, torch.zeros_like(steps_since_fired), steps_since_fired + 1)
            dead = steps_since_fired > cfg.dead_steps
        n_dead = int(dead.sum())
        if n_dead > 0 and cfg.aux_coefficient > 0:
            masked = torch.where(dead[None, :], pre, torch.full_like(pre, -torch.inf))
            aux_values, aux_indices = torch.topk(masked, min(k_aux, n_dead), dim=-1)
            aux_acts = torch.zeros_like(pre).scatter(-1, aux_indices, torch.relu(aux_values))
            aux_recon = aux_acts @ params["W_dec"]
            aux_mse = (residual.detach() - aux_recon).pow(2).sum(dim=-1).mean()
            loss = loss + cfg.aux_coefficient * min(n_dead / k_aux, 1.0) * aux_mse
        return loss, mse

    mse = _optimise(params, cfg, n, gen, loss_of)
    with torch.no_grad():
        sae = SparseAutoencoder(
            W_enc=params["W_enc"].detach() * scale, b_enc=params["b_enc"].detach(),
            W_dec=params["W_dec"].detach() / scale, b_dec=params["b_dec"].detach() / scale,
            architecture="topk", k=k, apply_b_dec_to_input=True, normalize_activations="none",
            hook_name=Point(layer, hook).saelens_name(), hook_z=hook == "attn_z", source="<demo SAE>",
            metadata={"model_name": model_name},
        )
    seconds = time.perf_counter() - t0
    stats = sae.sparsity(x)
    report = SAETrainReport(
        n_train=n, d_in=d, d_sae=d_sae, k=k, steps=cfg.steps, seconds=seconds, norm_scaling_factor=scale,
        final_mse=float(mse.detach()), explained_variance=explained_variance(x, sae.reconstruct(x)),
        l0=stats.l0, dead_share=stats.dead_share,
    )
    log.info("demo SAE: %d x %d, k=%d, %d steps in %.1f s; train explained variance %.3f, L0 %.1f, dead %.1f%%",
             d, d_sae, k, cfg.steps, seconds, report.explained_variance, report.l0, 100 * report.dead_share)
    return sae, report


def write_demo_sae(golds: np.ndarray, out_dir: str | Path, layer: int, config: SAETrainConfig = SAETrainConfig(),
                   model_name: str | None = None, hook: str = RESID_POST) -> SAETrainReport:
    """Train the demo SAE on ``golds [n, d]`` (at ``hook`` of block ``layer``) and save it as a SAELens directory at
    ``out_dir``."""
    sae, report = train_topk_sae(golds, layer, config, model_name, hook)
    save_sae(sae, out_dir, model_name=model_name,
             extra_metadata={"trained_by": "causal_kl.demo.sae", "train_config": asdict(config),
                             "train_report": asdict(report)})
    return report


def train_skip_transcoder(x_in: np.ndarray, y_out: np.ndarray, layer: int, config: SAETrainConfig = SAETrainConfig(),
                          l1_coefficient: float = 1.0, model_name: str | None = None,
                          hooks: tuple[str, str] = ("mlp_in", "mlp_out")) -> tuple[SparseAutoencoder, SAETrainReport]:
    """Train a skip transcoder (SAELens' ``SkipTranscoder``: ReLU latents, ``y = relu(x W_enc + b_enc) W_dec + b_dec +
    x W_skip^T``) to predict ``y_out [n, d_out]`` (the activations at ``hooks[1]``, the MLP's output) from ``x_in
    [n, d_in]`` (at ``hooks[0]``, the MLP's input), as SAELens' standard training does in miniature: the loss is the
    squared error summed over dimensions plus ``l1_coefficient`` times the latents' activations weighted by their
    decoder rows' norms (``StandardTrainingSAE``'s L1 penalty), the decoder's rows kept at unit norm after each step
    (so the penalty falls on the latents), Adam with the linear decay of ``train_topk_sae``.

    Inputs and targets are scaled to a mean norm of sqrt(d) for training; the scales are folded into the weights, so the
    saved transcoder reads and writes raw activations (``apply_b_dec_to_input: false``, ``normalize_activations:
    none``, as SAELens' transcoders require). ``config.k`` is unused (the sparsity comes from the L1 penalty)."""
    cfg = config
    x = torch.from_numpy(np.array(x_in, dtype=np.float32))
    y = torch.from_numpy(np.array(y_out, dtype=np.float32))
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"inputs and targets must be [n >= 2, d] of one n, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, d_in = x.shape
    d_out = int(y.shape[1])
    d_sae = cfg.expansion * d_in
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    a = float(d_in ** 0.5 / x.norm(dim=1).mean())
    b = float(d_out ** 0.5 / y.norm(dim=1).mean())
    xs, ys = x * a, y * b
    W_dec = torch.randn(d_sae, d_out, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5,
        "b_enc": torch.zeros(d_sae),
        "W_dec": W_dec,
        "b_dec": ys.mean(dim=0).clone(),
        "W_skip": torch.zeros(d_out, d_in),
    }

    def loss_of(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = xs[idx], ys[idx]
        acts = torch.relu(xb @ params["W_enc"] + params["b_enc"])  # [b, d_sae]
        pred = acts @ params["W_dec"] + params["b_dec"] + xb @ params["W_skip"].T
        mse = (yb - pred).pow(2).sum(dim=-1).mean()
        l1 = (acts * params["W_dec"].norm(dim=1)).sum(dim=-1).mean()
        return mse + l1_coefficient * l1, mse

    # unit decoder rows (as for the TopK SAE): the L1 penalty cannot shrink them instead of the latents
    mse = _optimise(params, cfg, n, gen, loss_of)
    with torch.no_grad():
        tc = SparseAutoencoder(
            W_enc=params["W_enc"].detach() * a, b_enc=params["b_enc"].detach(),
            W_dec=params["W_dec"].detach() / b, b_dec=params["b_dec"].detach() / b,
            W_skip=params["W_skip"].detach() * (a / b), architecture="skip_transcoder",
            apply_b_dec_to_input=False, normalize_activations="none",
            hook_name=Point(layer, hooks[0]).saelens_name(), hook_name_out=Point(layer, hooks[1]).saelens_name(),
            source="<demo skip transcoder>", metadata={"model_name": model_name},
        )
    seconds = time.perf_counter() - t0
    stats = tc.sparsity(x)
    report = SAETrainReport(
        n_train=n, d_in=d_in, d_sae=d_sae, k=0, steps=cfg.steps, seconds=seconds, norm_scaling_factor=a,
        final_mse=float(mse.detach()), explained_variance=explained_variance(y, tc.reconstruct(x)),
        l0=stats.l0, dead_share=stats.dead_share,
    )
    log.info("demo skip transcoder: %d -> %d x %d -> %d, %d steps in %.1f s; train explained variance %.3f, L0 %.1f, "
             "dead %.1f%%", d_in, d_sae, d_sae, d_out, cfg.steps, seconds, report.explained_variance, report.l0,
             100 * report.dead_share)
    return tc, report


def write_demo_transcoder(x_in: np.ndarray, y_out: np.ndarray, out_dir: str | Path, layer: int,
                          config: SAETrainConfig = SAETrainConfig(), l1_coefficient: float = 1.0,
                          model_name: str | None = None) -> SAETrainReport:
    """Train the demo's skip transcoder (``train_skip_transcoder``) and save it as a SAELens directory at ``out_dir``."""
    tc, report = train_skip_transcoder(x_in, y_out, layer, config, l1_coefficient, model_name)
    save_sae(tc, out_dir, model_name=model_name,
             extra_metadata={"trained_by": "causal_kl.demo.sae", "train_config": asdict(config),
                             "l1_coefficient": l1_coefficient, "train_report": asdict(report)})
    return report
