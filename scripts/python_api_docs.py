"""Writes docs/python-api.md, the reference of the Python client's public API, from the docstrings
and signatures of the installed `lesion` package, with the standard library only (inspect, ast).

    python scripts/python_api_docs.py           # rewrite docs/python-api.md
    python scripts/python_api_docs.py --check   # exit 1 if it is out of date or a docstring is missing

The client tests run the check (client/python/tests/test_api_docs.py), so a changed docstring or
signature fails them until the page is regenerated. What is public: a module's ``__all__`` where it
has one, else every name it defines that does not start with ``_``; of a class, its own members
that do not start with ``_`` (methods, class and static methods, properties, constants), and those of
the private lesion classes it derives from.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "python-api.md"

# The modules in the order of the page: what a notebook meets first, first.
MODULES = [
    "lesion.client",
    "lesion.result",
    "lesion.generation",
    "lesion.spec.experiment",
    "lesion.spec.dataset",
    "lesion.spec.interventions",
    "lesion.spec.measurements",
    "lesion.spec.server_sweep",
    "lesion.spec.client_sweep",
    "lesion.spec.sites",
    "lesion.plots",
    "lesion.patching",
    "lesion.local",
    "lesion.errors",
]
CONSTANT_TYPES = (str, int, float, tuple, list, frozenset)
MAX_CONSTANT = 400  # characters of a constant's repr shown


def _markdown(doc: str) -> str:
    """A docstring as Markdown: reST ``code`` becomes `code` and :meth:`x` `x`; outside code spans
    and indented code blocks, ``<``, ``>`` and ``*`` are escaped (``<index>`` is no HTML tag)."""
    doc = re.sub(r":(?:meth|func|class|attr):`", "`", doc.replace("``", "`")).strip()
    out = []
    for line in doc.split("\n"):
        if line.startswith("    "):  # a code block (after a blank line)
            out.append(line)
            continue
        parts = line.split("`")
        for i in range(0, len(parts), 2):  # the even parts lie outside code spans
            parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
        out.append("`".join(parts))
    return "\n".join(out)


def _signature(obj, name: str) -> str:
    """``name(params)`` without annotations (they repeat the prose and differ between Python versions)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return name + str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def own_doc(obj) -> str:
    """The docstring written for ``obj`` (inherited from a lesion base class for a method), or "" if
    none was: the one dataclasses make up ("Perplexity()") and those of builtins do not count."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return ""
        if obj.__doc__ is None or all(obj.__doc__ == base.__doc__ for base in obj.__mro__[1:2]):
            return "" if obj.__doc__ is None else doc
    return doc


def _module_constants(module) -> list:
    """Upper-case names the module itself assigns at the top level, in order, then those it
    re-exports through ``__all__`` (lesion.spec.sites: the names generated into ``_names.py``); not
    other imports."""
    tree = ast.parse(inspect.getsource(module))
    names = []
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        flat = []
        for t in targets:
            flat += t.elts if isinstance(t, ast.Tuple) else [t]
        for t in flat:
            if isinstance(t, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]*", t.id) and t.id not in names:
                names.append(t.id)
    for n in getattr(module, "__all__", ()):
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", n) and n not in names:
            names.append(n)
    return [n for n in names if isinstance(getattr(module, n, None), CONSTANT_TYPES)]


def module_objects(module) -> list:
    """(name, object) of the module's public classes and functions, in the order it defines them."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(module, n)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__:
            out.append((n, obj))
    return out


def class_members(cls) -> list:
    """(name, kind, object) of a class's public members, its own first, then those of the private
    lesion classes it derives from; kind is "method", "classmethod", "staticmethod", "property" or
    "constant"."""
    return [(name, kind, obj) for name, kind, obj, _ in _class_members(cls)]


def _class_members(cls) -> list:
    """class_members with a fourth field: whether the member's documentation is a base class's
    (defined there, or overridden without a docstring of its own)."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    fields |= set(getattr(cls, "_fields", ()))  # a NamedTuple's
    sources = [cls] + [b for b in cls.__mro__[1:] if b.__module__.startswith("lesion") and b.__name__.startswith("_")]
    out, seen = [], set()
    for source in sources:
        for name, raw in vars(source).items():
            if name.startswith("_") or name in seen or name in fields:
                continue
            seen.add(name)
            inherited = source is not cls or getattr(raw, "__doc__", None) is None
            if isinstance(raw, classmethod):
                out.append((name, "classmethod", getattr(cls, name), inherited))
            elif isinstance(raw, staticmethod):
                out.append((name, "staticmethod", getattr(cls, name), inherited))
            elif isinstance(raw, property):
                out.append((name, "property", raw, inherited))
            elif inspect.isfunction(raw):
                out.append((name, "method", raw, inherited))
            elif isinstance(raw, CONSTANT_TYPES):
                out.append((name, "constant", raw, False))
    return out


def public_objects() -> list:
    """(qualified name, object) of everything the page documents that needs a docstring."""
    out = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        out.append((module_name, module))
        for name, obj in module_objects(module):
            out.append((f"{module_name}.{name}", obj))
            if inspect.isclass(obj):
                for member, kind, value in class_members(obj):
                    if kind != "constant":
                        out.append((f"{module_name}.{name}.{member}", value))
    return out


def missing_docstrings() -> list:
    return [name for name, obj in public_objects() if not own_doc(obj)]


def _repr(value) -> str:
    """repr, with classes by their names."""
    if inspect.isclass(value):
        return value.__name__
    if isinstance(value, (tuple, list)) and value and all(inspect.isclass(v) for v in value):
        inner = ", ".join(v.__name__ for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return repr(value)


def _constant(name, value) -> str:
    text = _repr(value)
    if len(text) > MAX_CONSTANT:
        text = text[: MAX_CONSTANT - 4] + " ..."
    return f"- {_code(f'{name} = {text}')}"


def _code(text: str) -> str:
    """An inline code span that may itself hold backticks."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _member_signature(cls_name, member, kind, value) -> str:
    """``Class.member(params)``: without self (a method) or cls (a bound class method)."""
    if kind == "property":
        return f"{cls_name}.{member}"
    sig = _signature(value, f"{cls_name}.{member}")
    if kind == "method":
        sig = re.sub(r"\(self(, )?", "(", sig, count=1)
    return sig


def _anchor(text: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^a-z0-9_\- ]", "", text.lower()).replace(" ", "-")


def render() -> str:
    import lesion

    lines = [
        "# Python API reference",
        "",
        "<!-- Generated by scripts/python_api_docs.py from the docstrings of client/python/lesion; do not",
        "     edit: change the docstrings and run `python scripts/python_api_docs.py` (the client tests check",
        "     that this page is up to date). -->",
        "",
        "Every public class, function, method and constant of the `lesion` package, module by module;",
        "the README and [tutorial.md](tutorial.md) show them at work. Names listed under `lesion` are",
        "importable from the package itself (`lesion.Client`, `lesion.HeadAblation`); `lesion.plots`",
        "imports matplotlib on first use.",
        "",
        "## lesion",
        "",
        _markdown(inspect.getdoc(lesion)),
        "",
        "| name | documented in |",
        "|---|---|",
    ]
    where = {}
    for module_name in MODULES:
        for name, obj in module_objects(importlib.import_module(module_name)):
            where.setdefault(id(obj), (module_name, name))
    for name in lesion.__all__:
        obj = getattr(lesion, name)
        if id(obj) in where:
            module_name, qual = where[id(obj)]
            lines.append(f"| `lesion.{name}` | [{module_name}](#{_anchor(module_name + '.' + qual)}) |")
        else:
            lines.append(f"| `lesion.{name}` | {type(obj).__name__} |")
    lines.append("")
    lines.append("Modules: " + ", ".join(f"[{m}](#{_anchor(m)})" for m in MODULES) + ".")
    lines.append("")
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## {module_name}", "", _markdown(inspect.getdoc(module) or ""), ""]
        constants = _module_constants(module)
        if constants:
            lines += ["Constants:", ""]
            lines += [_constant(n, getattr(module, n)) for n in constants]
            lines.append("")
        for name, obj in module_objects(module):
            kind = "class" if inspect.isclass(obj) else "function"
            lines += [f"### {module_name}.{name}", "", "```python"]
            lines.append(("class " if kind == "class" else "") + _signature(obj, name))
            lines += ["```", "", _markdown(own_doc(obj)), ""]
            if kind != "class":
                continue
            members = _class_members(obj)
            constants = [(n, v) for n, k, v, _ in members if k == "constant"]
            if constants:
                lines += ["Constants: " + ", ".join(_code(f"{n} = {_repr(v)}") for n, v in constants), ""]
            for member, mkind, value, inherited in members:
                if mkind == "constant" or inherited:
                    continue
                lines += [f"#### {name}.{member}", ""]
                if mkind == "property":
                    lines += [f"*property* `{name}.{member}`", ""]
                else:
                    prefix = "" if mkind == "method" else f"{mkind} "
                    lines += ["```python", prefix + _member_signature(name, member, mkind, value), "```", ""]
                lines += [_markdown(own_doc(value)), ""]
            shared = [(n, k, v) for n, k, v, inherited in members if inherited and k != "constant"]
            if shared:  # documented once on a private base class: one line each
                lines += [f"Also, as every class of its kind, {name} has:", ""]
                for member, mkind, value in shared:
                    first = _markdown(own_doc(value)).split("\n\n")[0].replace("\n", " ")
                    lines.append(f"- `{_member_signature(name, member, mkind, value)}`: {first}")
                lines.append("")
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"
    if re.search(r" at 0x[0-9a-f]+", text):
        raise RuntimeError("python_api_docs: a default value's repr holds a memory address")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/python-api.md is out of date")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    missing = missing_docstrings()
    if missing:
        print("public names without a docstring:\n  " + "\n  ".join(missing), file=sys.stderr)
    text = render()
    if args.check:
        old = args.out.read_text() if args.out.is_file() else ""
        if old != text:
            diff = difflib.unified_diff(old.splitlines(), text.splitlines(), str(args.out), "generated", lineterm="")
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            print(f"{args.out} is out of date: run python scripts/python_api_docs.py", file=sys.stderr)
            return 1
        return 1 if missing else 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
