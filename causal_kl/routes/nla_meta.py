"""Reading and checking an NLA checkpoint's ``nla_meta.yaml`` sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from causal_kl.errors import CausalKLError

META_FILE = "nla_meta.yaml"


def read_meta(checkpoint: str | Path, roles: tuple[str, ...]) -> dict:
    """The sidecar of an NLA checkpoint whose ``role`` is one of ``roles``; ``kind`` must be ``nla_model``."""
    path = Path(checkpoint) / META_FILE
    if not path.exists():
        raise CausalKLError(path, None, "NLA sidecar not found",
                            f"point the route at an NLA checkpoint directory (config.json, weights, {META_FILE})")
    try:
        meta = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CausalKLError(path, None, f"not valid YAML ({str(e).splitlines()[0]})", "restore the checkpoint's sidecar") from e
    if meta.get("kind") != "nla_model":
        raise CausalKLError(path, "kind", f"got {meta.get('kind')!r}, expected 'nla_model'", "use an NLA checkpoint's sidecar")
    if meta.get("role") not in roles:
        raise CausalKLError(path, "role", f"got {meta.get('role')!r}, this route needs {' or '.join(roles)}",
                            "point the route at the right checkpoint (AR/critic for nla_ar, AV/actor for nla_av)")
    return meta


def meta_field(meta: dict, dotted: str, checkpoint: str | Path, kind: type | tuple = object) -> Any:
    """``meta['a']['b']`` for ``'a.b'``, with a one-line error when it is missing or of the wrong type."""
    cur: Any = meta
    for part in dotted.split("."):
        if not isinstance(cur, dict) or cur.get(part) is None:
            raise CausalKLError(Path(checkpoint) / META_FILE, dotted, "field missing",
                                f"add '{dotted}' to the sidecar (as the NLA training run wrote it)")
        cur = cur[part]
    if not isinstance(cur, kind):
        raise CausalKLError(Path(checkpoint) / META_FILE, dotted, f"got {cur!r}", f"set it to a {kind}")
    return cur


def template(meta: dict, keys: tuple[str, ...], placeholder: str, checkpoint: str | Path) -> str:
    """The first of ``prompt_templates.<key>`` present; it must contain ``{placeholder}``."""
    templates = meta.get("prompt_templates") or {}
    for key in keys:
        if templates.get(key):
            text = str(templates[key])
            if "{" + placeholder + "}" not in text:
                raise CausalKLError(Path(checkpoint) / META_FILE, f"prompt_templates.{key}",
                                    f"template has no {{{placeholder}}} placeholder", f"restore the template with {{{placeholder}}}")
            try:
                text.format(**{placeholder: ""})
            except (KeyError, IndexError, ValueError) as e:
                raise CausalKLError(Path(checkpoint) / META_FILE, f"prompt_templates.{key}",
                                    f"template cannot be filled with str.format ({e!r})",
                                    f"keep only the {{{placeholder}}} placeholder and write literal braces as {{{{ }}}}") from e
            return text
    raise CausalKLError(Path(checkpoint) / META_FILE, f"prompt_templates.{keys[0]}", "template missing",
                        f"add prompt_templates.{keys[0]} to the sidecar")


def check_width(meta: dict, checkpoint: str | Path, d: int) -> None:
    d_meta = int(meta_field(meta, "d_model", checkpoint, (int, float)))
    if d_meta != d:
        raise CausalKLError(Path(checkpoint) / META_FILE, "d_model", f"checkpoint width {d_meta} != the run's model width {d}",
                            "use the NLA checkpoint trained on this run's model")
