"""Argument checks of :func:`dream_sc.datasets.simulate_screen` (``ValueError`` naming the fix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._design import GUIDE_DESIGNS, target_names

_MOI = ("low", "high")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def _check_float(name: str, value: Any, lo: float, hi: float, *, open_lo: bool = False) -> None:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value > lo if open_lo else value >= lo) and value <= hi
    if not ok:
        bound = f"{'(' if open_lo else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must be a number in {bound}; got {value!r}.")


def _check_range(name: str, value: Any) -> None:
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(
            isinstance(v, int | float | np.integer | np.floating)
            and not isinstance(v, bool)
            and np.isfinite(v)
            for v in value
        )
        or value[0] > value[1]
    ):
        raise ValueError(
            f"{name} must be a pair (low, high) of finite numbers with low <= high; got {value!r}."
        )


def validate_arguments(args: dict[str, Any]) -> None:
    """Check the arguments of :func:`simulate_screen`; raise ``ValueError`` naming the fix."""
    _check_int("n_cells", args["n_cells"], 1)
    _check_int("n_targets", args["n_targets"], 1)
    _check_int("n_genes", args["n_genes"], args["n_targets"] if _is_int(args["n_targets"]) else 1)
    _check_int("n_junctions", args["n_junctions"], 0)
    _check_int("n_isoform_genes", args["n_isoform_genes"], 0)
    _check_int("n_scores", args["n_scores"], 1)
    _check_int("guides_per_target", args["guides_per_target"], 1)
    _check_int("n_ntc_guides", args["n_ntc_guides"], 1)
    _check_int("seed", args["seed"], 0)
    if not isinstance(args["continuous"], bool | np.bool_):
        raise ValueError(f"continuous must be True or False; got {args['continuous']!r}.")
    if args["moi"] not in _MOI:
        raise ValueError(f"moi must be one of 'low', 'high'; got {args['moi']!r}.")
    _check_float("ntc_fraction", args["ntc_fraction"], 0.0, 1.0, open_lo=True)
    if args["ntc_fraction"] >= 1.0:
        raise ValueError(f"ntc_fraction must be < 1; got {args['ntc_fraction']!r}.")
    _check_float("dose_noise", args["dose_noise"], 0.0, 10.0)
    _check_float("frac_responsive", args["frac_responsive"], 0.0, 1.0)
    _check_float("depth", args["depth"], 0.0, 1e6, open_lo=True)
    _check_float("technical_sd", args["technical_sd"], 0.0, 10.0)
    _check_float("guides_per_cell", args["guides_per_cell"], 0.0, 1e3, open_lo=True)
    for name in ("guide_log2_range", "crispri_log2_range", "crispra_log2_range"):
        _check_range(name, args[name])
    _check_float("guide_mix_skew", args["guide_mix_skew"], -10.0, 10.0)
    _check_float("escape_fraction", args["escape_fraction"], 0.0, 1.0)
    if args["escape_fraction"] >= 1.0:
        raise ValueError(f"escape_fraction must be < 1; got {args['escape_fraction']!r}.")
    if args["escape_fraction"] > 0 and args["moi"] != "low":
        raise ValueError("escape_fraction needs moi='low' (one guide per cell).")
    if args["guide_design"] not in GUIDE_DESIGNS:
        raise ValueError(
            f"guide_design must be one of {', '.join(map(repr, GUIDE_DESIGNS))}; "
            f"got {args['guide_design']!r}."
        )
    if args["moi"] == "high" and (args["guide_design"] != "shared" or args["guide_mix_skew"] != 0):
        raise ValueError(
            "guide_design='line_specific' and guide_mix_skew need moi='low' (one guide per cell)."
        )
    lines = args["cell_lines"]
    if (
        isinstance(lines, str)
        or not isinstance(lines, Sequence)
        or len(lines) == 0
        or not all(isinstance(c, str) and c for c in lines)
        or len(set(lines)) != len(lines)
    ):
        raise ValueError(
            f"cell_lines must be a non-empty sequence of distinct non-empty strings, the first "
            f"being the reference; got {lines!r}."
        )
    if args["guide_design"] == "line_specific" and len(lines) != 2:
        raise ValueError(
            "guide_design='line_specific' needs exactly two cell_lines (CRISPRi line, CRISPRa "
            f"line); got {lines!r}."
        )
    conc = args["splicing_concentration"]
    if conc is not None:
        pair = conc if isinstance(conc, Sequence) and not isinstance(conc, str) else (conc, conc)
        valid = len(pair) == 2 and all(
            isinstance(v, int | float | np.integer | np.floating)
            and not isinstance(v, bool)
            and np.isfinite(v)
            and v > 0
            for v in pair
        )
        if not valid or pair[0] > pair[1]:
            raise ValueError(
                "splicing_concentration must be None, a positive number or a pair (low, high) of "
                f"positive numbers with low <= high; got {conc!r}."
            )
    label = args["control_label"]
    if not isinstance(label, str) or not label or label in target_names(args["n_targets"]):
        raise ValueError(
            f"control_label must be a non-empty string that is not a target name; got {label!r}."
        )
