"""The shape of ``src/privspk``: sizes, the longest functions, and how often the DP parameters are named.

A static read (the standard library's :mod:`ast`, nothing is imported or run), used to measure a
restructuring before and after (issue 16):

* **line counts** per file and per package (first-level folder under ``src/privspk``; the
  top-level modules count as package ``.``): ``lines`` are physical lines, ``code`` the
  non-blank lines that are not ``#`` comments (docstrings count as code);
* **the longest functions**: every ``def`` / ``async def`` (methods and nested functions
  included, each on its own), length = ``end_lineno - lineno + 1`` of the ``def`` statement
  (decorators excluded, docstring included);
* **DP-parameter naming sites**: the number of places where one of the DP parameters is
  *named as a separate value*. The names are

      noise_multiplier, sample_rate, steps, local_steps, max_grad_norm, clip, unit, accountant,
      randomness

  and a place is one of

  1. a function parameter of that name (positional, keyword-only or positional-only;
     ``*args`` / ``**kwargs`` never count),
  2. a keyword argument of that name in a call (``f(noise_multiplier=...)``; ``**mapping``
     never counts),
  3. an annotated assignment of a bare name in a class body (a dataclass or NamedTuple
     field: ``class X: unit: str``),
  4. a string key of that name in a dict display (``{"sample_rate": q}``), the untyped way
     the same values travel.

  Attribute reads (``mechanism.noise_multiplier``) and other locals are *not* counted: reading
  a field of one typed object is what the restructuring aims for. The count is reported in total,
  per name, per kind of place and per package.

Writes ``results/code_shape_<label>.json`` and ``.md``; with ``--compare BEFORE AFTER`` (two
labels already written) it writes ``results/code_shape_compare.md``, the two side by side.

    python benchmarks/code_shape.py --label before
    python benchmarks/code_shape.py --label after
    python benchmarks/code_shape.py --compare before after
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "privspk"
RESULTS = Path(__file__).resolve().parent / "results"

DP_NAMES: tuple[str, ...] = (
    "noise_multiplier", "sample_rate", "steps", "local_steps", "max_grad_norm", "clip", "unit", "accountant",
    "randomness",
)
KINDS: tuple[str, ...] = ("parameter", "keyword", "field", "dict_key")
TOP_FUNCTIONS = 10


def _code_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def _package(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else "."


class _Visitor(ast.NodeVisitor):
    """Collects functions (qualified name, length) and DP naming sites of one module."""

    def __init__(self) -> None:
        self.functions: list[tuple[str, int, int]] = []  # (qualname, lineno, length)
        self.sites: list[tuple[str, str, int]] = []  # (name, kind, lineno)
        self._scope: list[str] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        qual = ".".join([*self._scope, node.name])
        self.functions.append((qual, node.lineno, node.end_lineno - node.lineno + 1))
        a = node.args
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs):
            if arg.arg in DP_NAMES:
                self.sites.append((arg.arg, "parameter", arg.lineno))
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id in DP_NAMES:
                self.sites.append((stmt.target.id, "field", stmt.lineno))
        self._scope.append(node.name)
        self.generic_visit(node)
        self._scope.pop()

    def visit_Call(self, node: ast.Call) -> None:
        for kw in node.keywords:
            if kw.arg in DP_NAMES:
                self.sites.append((kw.arg, "keyword", kw.value.lineno))
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key in node.keys:
            if isinstance(key, ast.Constant) and key.value in DP_NAMES:
                self.sites.append((key.value, "dict_key", key.lineno))
        self.generic_visit(node)


def measure(src: Path = SRC) -> dict:
    """The shape of the package under ``src`` as a JSON-ready dict."""
    files: dict[str, dict] = {}
    functions: list[dict] = []
    sites: list[dict] = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(rel))
        v = _Visitor()
        v.visit(tree)
        files[rel.as_posix()] = {"lines": len(text.splitlines()), "code": _code_lines(text),
                                 "dp_sites": len(v.sites)}
        functions += [{"function": f"{rel.as_posix()}:{q}", "line": ln, "lines": n} for q, ln, n in v.functions]
        sites += [{"file": rel.as_posix(), "name": n, "kind": k, "line": ln} for n, k, ln in v.sites]
    packages: dict[str, dict] = {}
    for rel, row in files.items():
        p = packages.setdefault(_package(Path(rel)), {"files": 0, "lines": 0, "code": 0, "dp_sites": 0})
        p["files"] += 1
        for key in ("lines", "code", "dp_sites"):
            p[key] += row[key]
    functions.sort(key=lambda f: (-f["lines"], f["function"]))
    return {
        "files": files,
        "packages": dict(sorted(packages.items())),
        "total": {"files": len(files), "lines": sum(r["lines"] for r in files.values()),
                  "code": sum(r["code"] for r in files.values()), "functions": len(functions)},
        "longest_functions": functions[:TOP_FUNCTIONS],
        "dp_sites": {
            "total": len(sites),
            "by_name": {n: c for n, c in sorted(Counter(s["name"] for s in sites).items())},
            "by_kind": {k: sum(1 for s in sites if s["kind"] == k) for k in KINDS},
            "by_package": dict(sorted(Counter(_package(Path(s["file"])) for s in sites).items())),
            "sites": sites,
        },
    }


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_markdown(shape: dict, *, label: str) -> str:
    """One measurement as markdown tables."""
    meta = shape["meta"]
    out = [f"# Code shape: {label}", "",
           f"`python benchmarks/code_shape.py --label {label}` at commit {meta['commit']} ({meta['date']}); "
           "static (ast), nothing timed.", "",
           f"Total: {shape['total']['files']} files, {shape['total']['lines']} lines "
           f"({shape['total']['code']} code), {shape['total']['functions']} functions; "
           f"DP-parameter naming sites: **{shape['dp_sites']['total']}**.", "",
           "## Packages", "", "| package | files | lines | code | DP sites |", "|---|---:|---:|---:|---:|"]
    for name, p in shape["packages"].items():
        out.append(f"| {name} | {p['files']} | {p['lines']} | {p['code']} | {p['dp_sites']} |")
    out += ["", f"## {TOP_FUNCTIONS} longest functions", "", "| function | line | lines |", "|---|---:|---:|"]
    out += [f"| `{f['function']}` | {f['line']} | {f['lines']} |" for f in shape["longest_functions"]]
    d = shape["dp_sites"]
    out += ["", "## DP-parameter naming sites", "", "| name | sites |", "|---|---:|"]
    out += [f"| {n} | {c} |" for n, c in d["by_name"].items()]
    out += ["", "| kind | sites |", "|---|---:|"] + [f"| {k} | {c} |" for k, c in d["by_kind"].items()]
    out += ["", "## Files (largest 25)", "", "| file | lines | code | DP sites |", "|---|---:|---:|---:|"]
    for rel, row in sorted(shape["files"].items(), key=lambda kv: -kv[1]["lines"])[:25]:
        out.append(f"| {rel} | {row['lines']} | {row['code']} | {row['dp_sites']} |")
    return "\n".join(out) + "\n"


def compare(before: dict, after: dict, *, labels: tuple[str, str]) -> str:
    """Two measurements side by side (markdown)."""
    a, b = labels
    out = [f"# Code shape: {a} vs {b}", "",
           f"`python benchmarks/code_shape.py --compare {a} {b}`; {a} at {before['meta']['commit']}, "
           f"{b} at {after['meta']['commit']}. Static (ast), nothing timed.", "",
           f"| measure | {a} | {b} |", "|---|---:|---:|",
           f"| files | {before['total']['files']} | {after['total']['files']} |",
           f"| lines | {before['total']['lines']} | {after['total']['lines']} |",
           f"| code lines | {before['total']['code']} | {after['total']['code']} |",
           f"| DP-parameter naming sites | {before['dp_sites']['total']} | {after['dp_sites']['total']} |",
           f"| longest function (lines) | {before['longest_functions'][0]['lines']} "
           f"(`{before['longest_functions'][0]['function']}`) | {after['longest_functions'][0]['lines']} "
           f"(`{after['longest_functions'][0]['function']}`) |",
           f"| largest file (lines) | {_largest(before)} | {_largest(after)} |", "",
           "## Packages", "", f"| package | lines {a} | lines {b} | DP sites {a} | DP sites {b} |",
           "|---|---:|---:|---:|---:|"]
    for name in sorted(set(before["packages"]) | set(after["packages"])):
        p, q = before["packages"].get(name, {}), after["packages"].get(name, {})
        out.append(f"| {name} | {p.get('lines', 0)} | {q.get('lines', 0)} | {p.get('dp_sites', 0)} | "
                   f"{q.get('dp_sites', 0)} |")
    out += ["", "## DP-parameter naming sites by name", "", f"| name | {a} | {b} |", "|---|---:|---:|"]
    for name in DP_NAMES:
        out.append(f"| {name} | {before['dp_sites']['by_name'].get(name, 0)} | "
                   f"{after['dp_sites']['by_name'].get(name, 0)} |")
    out += ["", f"| kind | {a} | {b} |", "|---|---:|---:|"]
    out += [f"| {k} | {before['dp_sites']['by_kind'][k]} | {after['dp_sites']['by_kind'][k]} |" for k in KINDS]
    out += ["", f"## {TOP_FUNCTIONS} longest functions", "", f"| {a} | lines | {b} | lines |", "|---|---:|---:|---:|"]
    for f, g in zip(before["longest_functions"], after["longest_functions"]):
        out.append(f"| `{f['function']}` | {f['lines']} | `{g['function']}` | {g['lines']} |")
    out += ["", "## Files that changed size", "", f"| file | lines {a} | lines {b} |", "|---|---:|---:|"]
    for rel in sorted(set(before["files"]) | set(after["files"])):
        x, y = before["files"].get(rel, {}).get("lines", 0), after["files"].get(rel, {}).get("lines", 0)
        if x != y:
            out.append(f"| {rel} | {x or '-'} | {y or '-'} |")
    return "\n".join(out) + "\n"


def _largest(shape: dict) -> str:
    rel, row = max(shape["files"].items(), key=lambda kv: kv[1]["lines"])
    return f"{row['lines']} (`{rel}`)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", help="measure now and write results/code_shape_<label>.{json,md}")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two written labels")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not args.label and not args.compare:
        ap.error("give --label or --compare")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.label:
        shape = measure()
        shape["meta"] = {"label": args.label, "commit": _git_head(),
                         "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                         "dp_names": list(DP_NAMES), "kinds": list(KINDS)}
        (args.out / f"code_shape_{args.label}.json").write_text(json.dumps(shape, indent=1) + "\n", encoding="utf-8")
        md = to_markdown(shape, label=args.label)
        (args.out / f"code_shape_{args.label}.md").write_text(md, encoding="utf-8")
        print(md)
    if args.compare:
        a, b = args.compare
        shapes = [json.loads((args.out / f"code_shape_{x}.json").read_text(encoding="utf-8")) for x in (a, b)]
        md = compare(*shapes, labels=(a, b))
        (args.out / "code_shape_compare.md").write_text(md, encoding="utf-8")
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
