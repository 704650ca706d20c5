"""What a spec names inside a model: projection modules, norms and hook sites (docs/design.md,
"Weight addressing" and "Hook sites")."""

from __future__ import annotations

import re

MODULES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
NORMS = ("attn", "mlp", "attn_post", "mlp_post", "q", "k", "final")  # which a model has: docs/architectures.md
SITE_NAMES = (
    "attn_in",
    "attn_z",
    "attn_pattern",
    "attn_out",
    "resid_mid",
    "mlp_in",
    "mlp_act",
    "mlp_out",
    "resid_post",
)
GLOBAL_SITES = ("embed", "final_norm", "logits")
_SITE = re.compile(rf"^(?:embed|final_norm|logits|blocks\.(?:\d+|\*)\.(?:{'|'.join(SITE_NAMES)}|\*))$")


def check_site(what, site):
    """A hook site name (docs/design.md, "Hook sites"); '*' stands for every layer (or every site name of a block)."""
    if not isinstance(site, str) or not _SITE.match(site):
        raise ValueError(
            f"{what}: unknown hook site {site!r}; valid: {', '.join(GLOBAL_SITES)} or blocks.L.NAME "
            f"(L a layer or '*') with NAME one of {', '.join(SITE_NAMES)}"
        )
    return site


def _sites(what, sites, default=None):
    if sites is None:
        return list(default or [])
    if isinstance(sites, str):
        sites = [sites]
    sites = [check_site(f"{what}[{i}]", s) for i, s in enumerate(sites)]
    return sites
