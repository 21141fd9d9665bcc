"""Generate docs/api.md from the docstrings of wsmem's public names.

Run from the repository root after changing a docstring::

    python docs/gen_api.py            # writes docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is out of date

``tests/test_docs.py`` runs the check, so the reference cannot drift from
the code.
"""
from __future__ import annotations

import argparse
import enum
import inspect
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "api.md")

# Sections in reading order: (title, [dotted names relative to wsmem]).
SECTIONS = [
    ("Workspaces", ["Workspace", "WorkspaceConfig", "get_workspace", "current_workspace",
                    "thread_workspaces", "destroy_thread_workspaces", "scope_out",
                    "aligned_heap", "heap_is_aligned", "align_ufunc_buffers",
                    "ufunc_buffers_aligned", "debug_mode", "get_debug_mode_name"]),
    ("Arrays", ["WsArray", "empty", "zeros", "ones", "full", "empty_like", "zeros_like",
                "ones_like", "full_like", "asarray"]),
    ("Statistics, history, leaks", ["WorkspaceStats", "WorkspaceHistory", "HISTORY_LENGTH",
                                    "LeakInfo", "plot_history"]),
    ("Policies", ["LearningPolicy", "AllocationPolicy", "SpillPolicy", "ResetPolicy",
                  "Location", "DebugMode"]),
    ("Training-loop toolkit", ["ArrayType", "WorkspaceMgr", "WorkspaceMode", "prefetch",
                               "shield", "set_gc_window", "toggle_periodic_gc"]),
    ("Errors and warnings", ["WorkspaceError", "WorkspaceLeakError", "WorkspaceOverflowError",
                             "PerformanceWarning"]),
]
PLUGIN = "wsmem.pytest_plugin"


def _signature(name: str, obj: object) -> tuple[str, str]:
    """(signature, docstring) of `obj`; Cython's embedded signature line
    (first docstring line ``name(...)``) is used when inspect has none."""
    doc = inspect.getdoc(obj) or ""
    short = name.rsplit(".", 1)[-1]
    try:
        sig = str(inspect.signature(obj))     # type: ignore[arg-type]
    except (TypeError, ValueError):
        sig = ""
    first, _, rest = doc.partition("\n")
    m = re.match(r"^(?:[\w.]*\.)?" + re.escape(short) + r"(\(.*\))(?: -> .*)?$", first)
    if m:                                     # Cython's embedded signature line
        if not sig:
            sig = m.group(1).replace("(self, ", "(").replace("(self)", "()")
        doc = rest.lstrip("\n")
    sig = sig.replace("<class 'float'>", "float")
    sig = re.sub(r"(: |-> )\"'([^']*)'\"", r"\1\2", sig)          # "'X'" -> X
    sig = re.sub(r"(: |-> )'([^']*)'", r"\1\2", sig)           # 'X' -> X
    sig = re.sub(r"<(\w+\.\w+): [^>]*>", r"\1", sig)            # <Enum.M: 'v'> -> Enum.M
    return sig, doc


_LIST_SECTIONS = {"Parameters", "Returns", "Raises", "Attributes", "Yields", "Warns",
                  "Other Parameters"}


def _md(doc: str) -> str:
    """numpydoc/reST docstring -> GitHub Markdown: section titles in bold,
    parameter lists as bullets, doctests and ``::`` blocks fenced, roles and
    double backquotes as plain code spans."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", doc).replace("``", "`")
    lines = doc.splitlines()
    out: list[str] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and nxt and set(nxt) == {"-"} and len(nxt) >= len(line.strip()):
            section = line.strip()
            out += [f"**{section}**", ""]
            i += 2
            continue
        if line.startswith(">>>"):
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        if line.rstrip().endswith("::") and not line.startswith(" "):
            out.append(line.rstrip()[:-1])
            i += 1
            block = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i][4:])
                i += 1
            while block and not block[0].strip():
                block.pop(0)
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```python", *block, "```", ""]
            continue
        if section in _LIST_SECTIONS and line.strip():
            if line.startswith(" "):
                out.append("  " + line.strip())
            else:
                name, sep, typ = line.partition(" : ")
                out.append(f"- `{name.strip()}`" + (f" ({typ.strip()})" if sep else "") + ":")
        elif line.startswith("    ") and line.strip():
            out.append("  " + line.strip())
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def _members(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name not in ("__enter__", "__exit__"):
            continue
        if name in ("__enter__", "__exit__"):
            continue
        if isinstance(value, classmethod):
            value = getattr(cls, name)           # bound: no `cls` in the signature
        elif isinstance(value, staticmethod):
            value = value.__func__
        if callable(value) or isinstance(value, property) or \
                type(value).__name__ in ("getset_descriptor", "member_descriptor"):
            out.append((name, value))
    return sorted(out)


def _block(title: str, sig: str, doc: str, level: str) -> str:
    head = f"{level} `{title}{sig}`"
    return head + "\n\n" + (_md(doc.strip()) + "\n\n" if doc.strip() else "")


def _render_obj(name: str, obj: object) -> str:
    import wsmem

    if isinstance(obj, int) and not isinstance(obj, bool):
        return f"### `wsmem.{name}`\n\n`{obj}`: cycles kept by `Workspace.history()`.\n\n"
    if isinstance(obj, type) and issubclass(obj, enum.Enum):
        doc = _md(inspect.getdoc(obj) or "")
        members = ", ".join(f"`{m.name}` (`{m.value!r}`)" for m in obj)
        return f"### `wsmem.{name}`\n\n{doc}\n\nMembers: {members}.\n\n"
    if isinstance(obj, type):
        sig, doc = _signature(name, obj)
        if issubclass(obj, BaseException):
            sig = f"({', '.join(b.__name__ for b in obj.__bases__)})"
        text = _block(f"wsmem.{name}", sig if not issubclass(obj, BaseException) else sig,
                      doc, "###")
        if issubclass(obj, BaseException):
            return text
        for mname, member in _members(obj):
            if isinstance(member, property) or not callable(member):
                mdoc = inspect.getdoc(member) or ""
                text += f"- `{name}.{mname}`" + (
                    f": {_md(mdoc.splitlines()[0])}" if mdoc else "") + "\n"
        text += "\n"
        for mname, member in _members(obj):
            if callable(member) and not isinstance(member, property):
                msig, mdoc = _signature(mname, member)
                if msig.startswith("(self, "):
                    msig = "(" + msig[len("(self, "):]
                elif msig.startswith("(self)"):
                    msig = "()" + msig[len("(self)"):]
                text += _block(f"{name}.{mname}", msig, mdoc, "####")
        return text
    sig, doc = _signature(name, obj)
    return _block(f"wsmem.{name}", sig, doc, "###")


def render() -> str:
    """The text of docs/api.md."""
    import importlib

    import wsmem

    parts = ["<!-- Generated by docs/gen_api.py from the docstrings: edit those, then run\n"
             "     `python docs/gen_api.py`. tests/test_docs.py checks that it is current. -->\n",
             "# API reference\n",
             "Every public name of `wsmem` (`wsmem.__all__`), by topic, with its "
             "docstring. Concepts: [concepts.md](concepts.md); ND4J names: "
             "[nd4j.md](nd4j.md).\n"]
    listed = [n for _, names in SECTIONS for n in names]
    missing = sorted(set(wsmem.__all__) - set(listed))
    if missing:
        raise SystemExit(f"gen_api.py: public names without a section: {missing}")
    parts.append("## Contents\n")
    for title, _ in SECTIONS + [("pytest plugin", [])]:
        anchor = title.lower().replace(",", "").replace(" ", "-")
        parts.append(f"- [{title}](#{anchor})")
    parts.append("")
    for title, names in SECTIONS:
        parts.append(f"## {title}\n")
        for n in names:
            parts.append(_render_obj(n, getattr(wsmem, n)))
    plugin = importlib.import_module(PLUGIN)
    parts.append("## pytest plugin\n")
    parts.append(f"Module `{PLUGIN}`.\n\n{_md(inspect.getdoc(plugin) or '')}\n")
    text = "\n".join(p.rstrip("\n") + "\n" for p in parts)
    return text.replace("\n\n\n", "\n\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with docs/api.md instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        with open(OUT, encoding="utf-8") as f:
            if f.read() != text:
                print("docs/api.md is out of date: run python docs/gen_api.py",
                      file=sys.stderr)
                return 1
        return 0
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
