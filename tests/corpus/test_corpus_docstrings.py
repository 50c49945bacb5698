"""Every public name of privspk.corpus (and each public method) documents itself with an Example."""

from __future__ import annotations

import inspect

import pytest

import privspk.corpus as corpus


def public_objects():
    for name in corpus.__all__:
        obj = getattr(corpus, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants and type aliases
        yield name, obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                target = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if callable(target):
                    yield f"{name}.{attr}", target


@pytest.mark.parametrize(("name", "obj"), list(public_objects()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_name_has_docstring_with_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert ">>>" in doc, f"{name}'s docstring has no >>> example"


def test_all_lists_only_existing_names_once():
    assert len(set(corpus.__all__)) == len(corpus.__all__)
    assert all(hasattr(corpus, name) for name in corpus.__all__)
