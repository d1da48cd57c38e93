"""Reconstruction routes: one module per kind, each with the functions its rule's job calls.

A route turns the eval golds into ``RECON`` (``site_id``, ``reconstruction`` float32[d] at the
norm the route produced it). Adding a route is one config entry; a new kind is one module here,
one rule in ``rules/recon.smk`` and its job in ``causal_kl/jobs/recon.py``.

| kind | rule(s) | module | reads |
|---|---|---|---|
| ``file`` | ``recon_file`` | ``file`` | an external parquet / npy + site ids / safetensors |
| ``pca`` | ``recon_pca`` | ``pca`` | training golds (``train_rows``) |
| ``text_channel`` | ``recon_text_channel`` | ``text_channel`` | training golds, the model (logit lens) |
| ``nla_ar`` | ``recon_nla_ar`` | ``nla_ar`` | an explanations parquet, the AR checkpoint |
| ``nla_av`` | ``explain_nla_av``, then ``recon_nla_ar`` | ``nla_av``, ``nla_ar`` | golds, the AV and AR checkpoints |

``base`` holds what the kinds share (matching external rows to sites, writing ``RECON``,
checking training rows); ``training`` the golds of route-training rows; ``nla_meta`` NLA's
checkpoint metadata.
"""
