"""Every public name of privspk.features (and each public method) documents itself with an Example."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator

import pytest

import privspk.features as package

MODULES = [importlib.import_module(f"privspk.features.{name}") for name in ("cache", "config", "crops", "extract")]


def public_objects() -> Iterator[tuple[str, object]]:
    for module in [package, *MODULES]:
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    target = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if callable(target):
                        yield f"{module.__name__}.{name}.{attr}", target


@pytest.mark.parametrize(("name", "obj"), list(public_objects()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_name_has_docstring_with_example(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert ">>>" in doc, f"{name}'s docstring has no >>> example"


@pytest.mark.parametrize("module", [package, *MODULES], ids=lambda m: m.__name__)
def test_all_lists_only_existing_names_once(module: object) -> None:
    names = module.__all__  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)
    assert all(hasattr(module, name) for name in names)
