"""Declare the likelihood of a modality."""

from __future__ import annotations

from mudata import MuData

from .. import _validation as V
from .._data import modality_data
from .._registration import DISTRIBUTIONS, OVERDISPERSIBLE, REGISTRATION_KEY, make_registration
from ..models.families import get_family


def register_modality(
    mdata: MuData,
    modality: str,
    *,
    distribution: str,
    layer: str | None = None,
    total_layer: str | None = None,
    group_key: str | None = None,
    overdispersed: bool = False,
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
    overdispersed
        Binomial and multinomial only: model extra-binomial / extra-multinomial variation
        between cells with a beta-binomial (binomial) or Dirichlet-multinomial (multinomial)
        likelihood. The mean model is unchanged; ``tl.fit_technical`` then also fits a
        concentration per feature (per group for multinomial) and ``tl.fit_trans`` uses it as
        fixed noise, like the negative binomial dispersion. Use it when cells with the same
        guide differ in their ratios by more than read sampling explains (typical for junction
        and isoform ratios with many reads per cell); the plain likelihoods are then
        over-confident.

    Returns
    -------
    None. Writes ``mdata[modality].uns["dream_sc"]`` (``distribution``, ``layer``,
    ``total_layer``, ``group_key`` and, when true, ``overdispersed``).

    Examples
    --------
    >>> import dream_sc as ds
    >>> mdata = ds.datasets.simulate_screen(n_cells=200, n_genes=20, seed=0)
    >>> ds.pp.register_modality(mdata, "splicing", distribution="binomial", total_layer="total")
    >>> mdata["splicing"].uns["dream_sc"]["distribution"]
    'binomial'
    >>> ds.pp.register_modality(mdata, "isoform", distribution="multinomial", overdispersed=True)
    >>> mdata["isoform"].uns["dream_sc"]["overdispersed"]
    True
    """
    V.check_mudata(mdata)
    V.check_modality(mdata, modality)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}."
            + V._suggest(distribution, DISTRIBUTIONS)
        )
    family = get_family(distribution)
    family.check_options(total_layer=total_layer, group_key=group_key)
    if overdispersed not in (True, False):
        raise ValueError(f"`overdispersed` must be True or False; got {overdispersed!r}.")
    if overdispersed and distribution not in OVERDISPERSIBLE:
        raise ValueError(
            f"`overdispersed=True` only applies to distribution='binomial' (beta-binomial) or "
            f"'multinomial' (Dirichlet-multinomial), not {distribution!r}; for counts use "
            "'negbinom' (already over-dispersed), for continuous values 'studentt', or drop "
            "`overdispersed=True`."
        )
    total_layer, group_key = family.registration_options(
        total_layer=total_layer,
        group_key=group_key,
        layers=mdata[modality].layers,
        modality=modality,
    )
    adata = mdata[modality]
    registration = make_registration(
        distribution,
        layer=layer,
        total_layer=total_layer,
        group_key=group_key,
        overdispersed=bool(overdispersed),
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
