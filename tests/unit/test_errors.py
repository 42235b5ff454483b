"""The error family is one module: every ``CaretakerError`` subclass anywhere in the product
is defined in ``core/errors.py`` and drawn in its docstring's tree."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import core.errors
from core.errors import CaretakerError

PRODUCT_PACKAGES = [
    "core",
    "inventory",
    "blocks",
    "history",
    "reports",
    "tasks",
    "flows",
    "deployments",
    "sandbox",
]


def _import_everything() -> None:
    for name in PRODUCT_PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            importlib.import_module(info.name)


def _family(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_family(sub)]
    return out


_import_everything()
FAMILY = _family(CaretakerError)


def test_the_family_is_not_empty() -> None:
    assert len(FAMILY) >= 15


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_every_caretaker_error_is_defined_in_core_errors_and_drawn_in_its_tree(cls: type) -> None:
    assert cls.__module__ == "core.errors", f"{cls.__name__} is defined in {cls.__module__}"
    assert f"── {cls.__name__} " in (core.errors.__doc__ or "")


def test_the_tree_names_no_class_that_does_not_exist() -> None:
    import re

    drawn = set(re.findall(r"── (\w+)", core.errors.__doc__ or ""))
    assert drawn == {c.__name__ for c in FAMILY}
