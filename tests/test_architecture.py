"""Layering rules: the stores own every stored key; no private name crosses subpackages; the
fit settings are declared by the public ``tl`` signatures and the one ``FitConfig`` only."""

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


def test_doc_params_indents_texts_like_their_placeholder():
    from dream_sc.pl._docs import AX, SHOW, doc_params, fill_doc

    doc = "Plot.\n\n    Parameters\n    ----------\n    {ax}\n    {show}\n    data = {'a': 1}\n"
    filled = fill_doc(doc, {"ax": AX, "show": SHOW})
    assert "    ax\n        Axes to draw into, else a new figure.\n    show\n        Call" in filled
    assert filled.endswith("    data = {'a': 1}\n")  # other braces are left alone
    with pytest.raises(KeyError, match="no text"):
        fill_doc(doc, {"ax": AX})
    with pytest.raises(KeyError, match="no placeholder"):
        fill_doc("Plot.\n", {"ax": AX})

    @doc_params(ax=AX)
    def plot(ax=None):
        """Plot.

        Parameters
        ----------
        {ax}
        """

    assert "        ax\n            Axes to draw into" in plot.__doc__


def test_plot_docstrings_share_each_repeated_text_once():
    import dream_sc as ds
    from dream_sc.pl import _docs

    for name in ds.pl.__all__:
        doc = getattr(ds.pl, name).__doc__ or ""
        assert not re.search(r"^\s*\{\w+\}\s*$", doc, re.MULTILINE), f"pl.{name}: unfilled"
    texts = [v for k, v in vars(_docs).items() if k.isupper() and isinstance(v, str)]
    sources = {p.name: p.read_text() for p in _modules("pl") if p.name != "_docs.py"}
    for text in texts:
        block = "\n".join("    " + line for line in text.splitlines()) + "\n"
        copies = [name for name, source in sources.items() if block in source]
        assert not copies, f"use the shared text of pl/_docs.py instead of copies: {copies}"


#: The fit settings, and the parts of the package that are not on the fit path.
FIT_SETTINGS = {"seed", "n_steps", "lr", "batch_size", "n_samples", "device", "max_memory_gb"}
OFF_FIT_PATH = ("datasets", "io", "pp", "pl", "get", "cli.py")
#: Functions that may declare fit settings: the public steps (the contract's keywords) and the
#: screen's per-target seed helpers (an int seed in, an int seed out).
SETTING_OWNERS = {
    "fit_technical", "fit_cis", "fit_trans", "fit_screen", "test_trans", "calibration_check",
    "_run", "_fit_target", "target_seed", "manifest_of", "resumed_seed",
}  # fmt: skip
#: Modules of the cis model not yet converted (draws seeded by an int, device arguments).
SETTINGS_PENDING = {"models/cis.py", "models/cis_dosage.py", "models/cis_laplace.py"}


def _setting_declarations(tree: ast.AST) -> list[tuple[str, str]]:
    """``(owner, setting)`` of every parameter or dataclass field named like a fit setting."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
            found += [(node.name, a.arg) for a in args if a.arg in FIT_SETTINGS]
        elif isinstance(node, ast.ClassDef):
            found += [
                (node.name, b.target.id)
                for b in node.body
                if isinstance(b, ast.AnnAssign)
                and isinstance(b.target, ast.Name)
                and b.target.id in FIT_SETTINGS
            ]
    return found


def test_fit_settings_are_declared_once():
    """Below the public signatures the settings travel as one ``FitConfig``."""
    stray, total = [], 0
    for path in _modules():
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(OFF_FIT_PATH):
            continue
        for owner, name in _setting_declarations(ast.parse(path.read_text())):
            total += 1
            allowed = owner in SETTING_OWNERS or (rel, owner) == ("engine/config.py", "FitConfig")
            if not allowed and rel not in SETTINGS_PENDING:
                stray.append(f"{rel}: {owner}({name})")
    assert not stray, f"pass the FitConfig (or a generator / like tensor) instead: {stray}"
    assert total <= 45, total
