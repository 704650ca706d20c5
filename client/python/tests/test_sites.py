"""The client's hook-site grammar is lesiond's (model/hook_sites.cc, ParseSitePattern): one table of
patterns, checked against the builders and, when lesiond is built, against the server itself."""

import pytest

import lesion
from lesion.spec import check_site
from lesion.spec.sites import parse_site

# (pattern, accepted): every layer used is < 5, stories260K's layer count, so that the server's
# answer depends on the grammar alone.
PATTERNS = [
    ("embed", True),
    ("final_norm", True),
    ("logits", True),
    ("blocks.0.attn_in", True),
    ("blocks.4.resid_post", True),
    ("blocks.*.resid_post", True),
    ("blocks.*.attn_pattern", True),
    ("blocks.*.mlp_act", True),
    ("blocks.2.attn_z", True),
    ("blocks.02.mlp_out", True),  # SimpleAtoi: leading zeros
    ("blocks.+1.resid_mid", True),  # SimpleAtoi: a leading '+'
    ("blocks.-0.mlp_in", True),  # -0 is layer 0
    (" blocks.1.attn_out\t", True),  # the pattern is stripped of ASCII whitespace
    ("blocks. 1 .attn_out", True),  # and so is the layer
    ("  logits ", True),
    ("blocks.*.*", False),  # the reported bug: no wildcard for the site name
    ("blocks.0.*", False),
    ("blocks.*", False),
    ("blocks.1", False),
    ("blocks.1.resid", False),
    ("blocks.0.logits", False),  # a model-level site is not per layer
    ("blocks.0.embed", False),
    ("resid_post", False),
    ("blocks.x.attn_z", False),
    ("blocks..attn_z", False),
    ("blocks.-1.attn_z", False),
    ("blocks.1.5.attn_z", False),
    ("blocks.1.attn_z.", False),
    ("blocks.0x1.attn_z", False),
    ("blocks.1e0.attn_z", False),
    ("blocks.\u0663.attn_z", False),  # an Arabic-Indic digit: not ASCII
    ("blocks.99999999999999999999.attn_z", False),  # does not fit int64
    ("blocks.* .attn_z", False),
    ("blocks.1. attn_z", False),
    ("Blocks.1.attn_z", False),
    ("EMBED", False),
    ("block.1.attn_z", False),
    ("embed,logits", False),  # one pattern per entry (the CLI's --sites list is another grammar)
    ("", False),
    ("\u00a0embed", False),  # a no-break space is not ASCII whitespace
]


def builders(pattern):
    """Every builder that takes a site pattern (attn_pattern only where the server takes it)."""
    out = [lambda: lesion.Capture(sites=[pattern])]
    if "attn_pattern" not in pattern:
        out += [
            lambda: lesion.ActivationStats(sites=[pattern]),
            lambda: lesion.MassiveActivations(sites=[pattern]),
            lambda: lesion.ActivationEdit(site=pattern),
        ]
    return out


@pytest.mark.parametrize("pattern, accepted", PATTERNS)
def test_site_grammar(pattern, accepted):
    for make in builders(pattern):
        if accepted:
            make()
        else:
            with pytest.raises(ValueError, match="hook site"):
                make()
    if accepted:
        assert check_site("x", pattern) == pattern  # returned unchanged


def test_site_errors_name_what_and_why():
    with pytest.raises(ValueError, match=r"ActivationStats.sites\[0\]: unknown hook site 'blocks.\*.\*': no per-layer"):
        lesion.ActivationStats(sites=["blocks.*.*"])
    with pytest.raises(ValueError, match="layer 'x' is not a number or \\*"):
        check_site("s", "blocks.x.attn_z")
    with pytest.raises(ValueError, match="layer -1 out of range"):
        check_site("s", "blocks.-1.attn_z")
    with pytest.raises(ValueError, match="known: embed, final_norm, logits"):
        check_site("s", "resid_post")
    assert parse_site("blocks.*.resid_post") == ("resid_post", "*")
    assert parse_site(" blocks.+3.attn_z ") == ("attn_z", 3)
    assert parse_site("logits") == ("logits", None)


# What the server refuses of attn_pattern whatever the model, per measurement or intervention.
PATTERN_USES = [
    ("activation_stats", lambda s: lesion.ActivationStats(sites=[s]), "a probability, not an activation"),
    ("massive_activations", lambda s: lesion.MassiveActivations(sites=[s]), "probabilities, not activations"),
    ("activation_edit", lambda s: lesion.ActivationEdit(site=s), "cannot be edited"),
]


@pytest.mark.parametrize("kind, make, message", PATTERN_USES)
def test_attn_pattern_is_refused_where_the_server_refuses_it(kind, make, message):
    with pytest.raises(ValueError, match=message):
        make("blocks.*.attn_pattern")
    with pytest.raises(ValueError, match=message):
        make(" blocks.0.attn_pattern")
    lesion.Capture(sites=["blocks.*.attn_pattern"])  # a capture takes it


def spec_with(server, pattern, kind="capture"):
    """A spec dict that reaches the server past the client's checks."""
    spec = {
        "model": server.model,
        "dataset": {"text": "Once upon a time there was a cat."},
        "eval": {"seq_len": 8, "max_windows": 1},
        "measurements": [{"perplexity": {}}],
    }
    if kind == "capture":
        spec["measurements"].append({"capture": {"sites": [pattern], "positions": [0], "max_windows": 1}})
    elif kind == "activation_edit":
        spec["interventions"] = [{"activation_edit": {"site": pattern, "positions": [0], "op": "ZERO"}}]
    else:
        spec["measurements"].append({kind: {"sites": [pattern]}})
    return spec


def server_accepts(server, spec):
    """Whether lesiond runs the spec: a refusal is InvalidArgument at submission or a failed run."""
    try:
        h = server.submit(spec)
    except lesion.InvalidArgument:
        return False
    return h.wait(progress=False).status == "done"


def test_the_server_agrees_on_every_pattern(server):
    """Each pattern of the table sent to lesiond in a capture: it accepts exactly the patterns the
    client accepts."""
    disagree = [
        (pattern, accepted)
        for pattern, accepted in PATTERNS
        if server_accepts(server, spec_with(server, pattern)) != accepted
    ]
    assert not disagree, f"the server decides otherwise on {disagree}"


@pytest.mark.parametrize("kind, make, message", PATTERN_USES)
def test_the_server_refuses_attn_pattern_where_the_client_does(server, kind, make, message):
    assert not server_accepts(server, spec_with(server, "blocks.0.attn_pattern", kind))
    assert server_accepts(server, spec_with(server, "blocks.0.resid_post", kind))
