"""The type stubs (python/gfer/_gfer.pyi) describe the module as built: the same names,
the same parameters with the same defaults, the same docstrings."""

import ast
import inspect
import sys
from pathlib import Path

import gfer
from gfer import _gfer

STUB = Path(__file__).resolve().parents[2] / "python" / "gfer" / "_gfer.pyi"


def stub_definitions():
    """name -> ast node of every top-level def and class of the stub, and `Class.member`
    for their members (of overloads, the first, which carries the docstring)."""
    tree = ast.parse(STUB.read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.setdefault(node.name, node)
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef):
                        found.setdefault(f"{node.name}.{member.name}", member)
    return found


def parameters(node: ast.FunctionDef):
    """(name, kind, default) of a stub def, `self` left out."""
    args = node.args
    out = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + args.defaults
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = "POSITIONAL_ONLY" if i < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        out.append((arg.arg, kind, default))
    if args.vararg:
        out.append((args.vararg.arg, "VAR_POSITIONAL", None))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", default))
    return [
        (name, kind, inspect.Parameter.empty if d is None else ast.literal_eval(d))
        for name, kind, d in out
        if name != "self"
    ]


def runtime_parameters(obj):
    return [
        (p.name, p.kind.name, p.default)
        for p in inspect.signature(obj).parameters.values()
        if p.name != "self"
    ]


def test_every_name_of_the_module_is_in_the_stub_and_back():
    stub = {name for name in stub_definitions() if "." not in name}
    runtime = {name for name in dir(_gfer) if not name.startswith("__")}
    assert stub == runtime
    assert set(gfer.__all__) - {"__version__"} <= runtime


def is_property(node) -> bool:
    return any(getattr(d, "id", None) == "property" for d in node.decorator_list)


def test_signatures_and_docstrings_are_the_modules():
    checked = 0
    for name, node in stub_definitions().items():
        owner, _, member = name.partition(".")
        obj = getattr(_gfer, owner)
        if member == "__init__":
            # A class's signature is its constructor's; a class of the stable ABI shows
            # none before Python 3.10.
            if sys.version_info < (3, 10):
                continue
            assert runtime_parameters(obj) == parameters(node), name
            checked += 1
            continue
        if member:
            obj = getattr(obj, member)
        assert ast.get_docstring(node) == inspect.cleandoc(obj.__doc__), name
        if isinstance(node, ast.FunctionDef) and not is_property(node):
            assert runtime_parameters(obj) == parameters(node), name
            checked += 1
    assert checked >= (10 if sys.version_info >= (3, 10) else 8)
