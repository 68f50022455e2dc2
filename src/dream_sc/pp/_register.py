"""Declare the likelihood of a modality."""

from __future__ import annotations

from mudata import MuData

from .. import _validation as V
from .._data import modality_data
from .._registration import DISTRIBUTIONS, REGISTRATION_KEY, make_registration


def register_modality(
    mdata: MuData,
    modality: str,
    *,
    distribution: str,
    layer: str | None = None,
    total_layer: str | None = None,
    group_key: str | None = None,
) -> None:
    """Declare how a modality is modelled.

    The data are validated for the chosen distribution before anything is written.

    Parameters
    ----------
    mdata
        The screen.
    modality
        Name of the modality in ``mdata.mod``.
    distribution
        ``"negbinom"`` (raw counts), ``"binomial"`` (successes in X, trials in ``total_layer``),
        ``"multinomial"`` (counts; features sharing ``var[group_key]`` are the categories of one
        multinomial), ``"normal"`` or ``"studentt"`` (continuous values, NaN = missing).
    layer
        Layer holding the observations (default ``X``).
    total_layer
        Binomial only: layer with the trials (default ``"total"``).
    group_key
        Multinomial only: var column naming each feature's group (default ``"group"``).

    Returns
    -------
    None. Writes ``mdata[modality].uns["dream_sc"]`` (``distribution``, ``layer``,
    ``total_layer``, ``group_key``).

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=200, n_genes=20, seed=0)
    >>> ds.pp.register_modality(mdata, "splicing", distribution="binomial", total_layer="total")
    >>> mdata["splicing"].uns["dream_sc"]["distribution"]
    'binomial'
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}."
            + V._suggest(distribution, DISTRIBUTIONS)
        )
    if total_layer is not None and distribution != "binomial":
        raise ValueError("`total_layer` only applies to distribution='binomial'.")
    if group_key is not None and distribution != "multinomial":
        raise ValueError("`group_key` only applies to distribution='multinomial'.")
    if distribution == "binomial":
        total_layer = total_layer or "total"
        if total_layer not in mdata[modality].layers:
            raise KeyError(
                f"Binomial modality {modality!r} needs the trials in layer {total_layer!r}; "
                f"layers present: {list(mdata[modality].layers)}. Pass `total_layer=`."
            )
    if distribution == "multinomial":
        group_key = group_key or "group"
    adata = mdata[modality]
    registration = make_registration(
        distribution, layer=layer, total_layer=total_layer, group_key=group_key
    )
    previous = adata.uns.get(REGISTRATION_KEY)
    adata.uns[REGISTRATION_KEY] = registration
    try:  # validate the data under the new registration, restore on failure
        modality_data(mdata, modality, adata.obs_names, layer=layer)
    except Exception:
        if previous is None:
            del adata.uns[REGISTRATION_KEY]
        else:
            adata.uns[REGISTRATION_KEY] = previous
        raise
