"""What a spec names inside a model: projection modules, norms and hook sites (docs/design.md,
"Weight addressing" and "Hook sites").

The names come from common/model_names.def, which lesiond is built from (``_names.py`` is generated
from it). The site grammar is lesiond's own (``ParseSitePattern`` in model/hook_sites.cc), mirrored
exactly so that the client refuses what the server refuses and nothing else: ``embed``, ``final_norm``,
``logits``, or ``blocks.L.NAME`` with ``L`` a layer number or ``*`` (every layer) and ``NAME`` one
per-layer site (no wildcard: ``blocks.*.*`` is refused). Whether a layer exists depends on the
model and is checked by the server.
"""

from __future__ import annotations

import re

from ._names import GLOBAL_SITES, MODULES, NORMS, SITE_NAMES  # generated from common/model_names.def

__all__ = ["MODULES", "NORMS", "SITE_NAMES", "GLOBAL_SITES", "parse_site", "check_site"]

# absl::StripAsciiWhitespace and absl::SimpleAtoi skip these (absl::ascii_isspace), nothing else.
_ASCII_SPACE = " \t\n\v\f\r"
# absl::SimpleAtoi in base 10: surrounding ASCII whitespace, one optional sign, ASCII digits only.
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")
_INT64 = (-(2**63), 2**63 - 1)
_KNOWN = f"{', '.join(GLOBAL_SITES)}, blocks.L.{{{', '.join(SITE_NAMES)}}}"


def parse_site(site) -> tuple:
    """``(name, layer)`` of a hook site or pattern, as lesiond parses it: ``("embed", None)``,
    ``("attn_z", 3)`` for ``blocks.3.attn_z``, ``("resid_post", "*")`` for ``blocks.*.resid_post``.
    ValueError (lesiond's wording) for anything lesiond refuses whatever the model; a layer beyond
    the model's last is the server's to refuse."""
    if not isinstance(site, str):
        raise ValueError(f"unknown hook site {site!r}: expected a string (known: {_KNOWN})")
    pattern = site.strip(_ASCII_SPACE)
    if pattern in GLOBAL_SITES:
        return pattern, None
    parts = pattern.split(".")
    if len(parts) != 3 or parts[0] != "blocks":
        raise ValueError(f"unknown hook site {pattern!r} (known: {_KNOWN})")
    if parts[2] not in SITE_NAMES:
        raise ValueError(f"unknown hook site {pattern!r}: no per-layer site {parts[2]!r} (known: {_KNOWN})")
    if parts[1] == "*":
        return parts[2], "*"
    m = _ATOI.fullmatch(parts[1])
    layer = int(m.group(1)) if m else None
    if layer is None or not _INT64[0] <= layer <= _INT64[1]:
        raise ValueError(f"hook site {pattern!r}: layer {parts[1]!r} is not a number or *")
    if layer < 0:
        raise ValueError(f"hook site {pattern!r}: layer {layer} out of range (layers count from 0)")
    return parts[2], layer


def check_site(what, site):
    """A hook site name or pattern as lesiond accepts it (see the module's docstring): returned
    unchanged, or ValueError naming ``what``. ``*`` stands for every layer, never for a site name."""
    try:
        parse_site(site)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return site


def _sites(what, sites, default=None, no_pattern=None):
    """A list of checked sites; ``no_pattern``: why this use refuses ``attn_pattern`` sites (as the
    server does for activation statistics, massive activations and activation edits)."""
    if sites is None:
        return list(default or [])
    if isinstance(sites, str):
        sites = [sites]
    sites = [check_site(f"{what}[{i}]", s) for i, s in enumerate(sites)]
    if no_pattern:
        for i, s in enumerate(sites):
            if parse_site(s)[0] == "attn_pattern":
                raise ValueError(f"{what}[{i}]: {no_pattern}")
    return sites
