"""Layering rules: the stores own every stored key; no private name crosses subpackages."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "dream_sc"
#: Suffixes of stored keys and columns; only ``dream_sc._stores`` may append them to a key.
STORED_SUFFIX = re.compile(r"^_(dose_|dose$|curve_|curve$|posterior|informative)")
LAYERS = ("get", "pl", "tl")


def _modules(*packages: str) -> list[pathlib.Path]:
    if not packages:
        return sorted(SRC.rglob("*.py"))
    return sorted(p for pkg in packages for p in (SRC / pkg).rglob("*.py"))


def _key_strings(tree: ast.AST) -> list[int]:
    """Lines that append a stored-key suffix to a value (f-string or ``+``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            for before, part in zip(parts, parts[1:], strict=False):
                if (
                    isinstance(before, ast.FormattedValue)
                    and isinstance(part, ast.Constant)
                    and STORED_SUFFIX.match(str(part.value))
                ):
                    lines.append(node.lineno)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            right = node.right
            if isinstance(right, ast.Constant) and STORED_SUFFIX.match(str(right.value)):
                lines.append(node.lineno)
    return lines


def test_key_check_finds_key_strings():
    tree = ast.parse('a = f"{key}_curve_{stat}"\nb = key + "_posterior"\nc = f"{k}_x"\n')
    assert _key_strings(tree) == [1, 2]


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_never_build_stored_keys(layer):
    found = [
        f"{path.relative_to(SRC)}:{line}"
        for path in _modules(layer)
        for line in _key_strings(ast.parse(path.read_text()))
    ]
    assert not found, f"build stored keys through dream_sc._stores (*Keys classes): {found}"


def test_no_private_name_crosses_subpackages():
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            # ``from ..get._tables import _name``: another subpackage (root modules such as
            # ``.._validation`` and private packages such as ``.._stores`` are the package's own)
            if (
                isinstance(node, ast.ImportFrom)
                and node.level >= 2
                and node.module
                and not node.module.startswith("_")
            ):
                found += [
                    f"{path.relative_to(SRC)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not found, f"import public names (or move the helper to a shared module): {found}"
