"""`meshlet.__all__` is the public surface: exactly the public names the package exports."""

from __future__ import annotations

import types

import meshlet


def test_all_lists_exactly_the_public_names() -> None:
    exported = {
        name
        for name, value in vars(meshlet).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(meshlet.__all__) == sorted(exported)


def test_every_name_in_all_imports() -> None:
    for name in meshlet.__all__:
        assert getattr(meshlet, name) is not None
