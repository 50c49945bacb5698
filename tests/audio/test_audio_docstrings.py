"""Every public name of privspk.audio (and each public method) documents itself with an Example."""

from __future__ import annotations

import inspect

import pytest

import privspk.audio as audio


def public_objects():
    for name in audio.__all__:
        obj = getattr(audio, name)
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
    assert len(set(audio.__all__)) == len(audio.__all__)
    assert all(hasattr(audio, name) for name in audio.__all__)
