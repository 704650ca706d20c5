"""docs/python-api.md is what scripts/python_api_docs.py makes of the docstrings, and every public
name has a docstring of its own."""

import importlib.util

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "python_api_docs.py"
PAGE = ROOT / "docs" / "python-api.md"


def generator():
    spec = importlib.util.spec_from_file_location("python_api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_api_md_is_up_to_date():
    text = generator().render()
    assert PAGE.is_file() and PAGE.read_text() == text, (
        "docs/python-api.md is out of date with the docstrings: run python scripts/python_api_docs.py "
        "(after pip install ./client/python)"
    )


def test_every_public_name_has_a_docstring():
    assert generator().missing_docstrings() == []


def test_the_page_covers_what_researchers_looked_for():
    text = PAGE.read_text()
    for name in (
        "Result.layer_stats",
        "Result.attention_sink_frame",
        "Result.captures",
        "Result.metric",
        "Client.experiments",
        "head_sweep_heatmap",
        "KLDivergence",
        "baseline cache",
    ):
        assert name in text, name
    assert "[docs/python-api.md](docs/python-api.md)" in (ROOT / "README.md").read_text()


def test_a_missing_docstring_is_found(monkeypatch):
    from lesion import plots

    g = generator()

    def undocumented():
        pass

    undocumented.__module__ = "lesion.plots"
    monkeypatch.setattr(plots, "undocumented", undocumented, raising=False)
    assert g.missing_docstrings() == ["lesion.plots.undocumented"]
    assert "### lesion.plots.undocumented" in g.render()
