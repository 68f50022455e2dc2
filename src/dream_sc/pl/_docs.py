"""Parameter texts shared by the plot docstrings, and the decorator that fills them in.

Each repeated parameter description exists once, here; a plot function writes a placeholder
(``{show}``, ``{ax}``, ...) on its own line in its ``Parameters`` section and is decorated
with ``@doc_params(show=SHOW, ax=AX, ...)`` (scanpy's ``_doc_params`` pattern). The texts are
stored without indentation; :func:`doc_params` indents every line of a text like its
placeholder, so the rendered docstring stays valid numpydoc.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

MDATA_TRANS = """\
mdata
    A screen fitted with :func:`dream_sc.tl.fit_trans`."""
MDATA_SCREEN = """\
mdata
    A screen fitted with :func:`dream_sc.tl.fit_screen`."""
MODALITY = """\
modality
    Fitted modality."""
KEY_TRANS = """\
key
    ``key_added`` of the trans fit."""
LABEL_GUIDES = """\
label_guides
    Tick labels with guide names (turn off for hundreds of guides)."""
PANEL_SIZE = """\
panel_size
    Width and height (inches) of one axes of a new figure."""
FIGSIZE = """\
figsize
    Size of a new figure."""
AX = """\
ax
    Axes to draw into, else a new figure."""
SHOW = """\
show
    Call :func:`matplotlib.pyplot.show` (default ``settings.autoshow``)."""
RETURN_FIG = """\
return_fig
    Return the Figure instead of the Axes."""
RETURN_FIG_LIST = """\
return_fig
    Return the Figure instead of the list of Axes."""

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.MULTILINE)


def fill_doc(doc: str, texts: dict[str, str]) -> str:
    """``doc`` with each placeholder line ``{name}`` replaced by ``texts[name]``, indented like it.

    Placeholders must stand alone on their line; other braces in ``doc`` are left alone.
    """
    used = set()

    def indent(match: re.Match) -> str:
        name, pad = match["name"], match["indent"]
        if name not in texts:
            raise KeyError(f"docstring placeholder {{{name}}} has no text")
        used.add(name)
        return "\n".join(pad + line if line else line for line in texts[name].splitlines())

    filled = _PLACEHOLDER.sub(indent, doc)
    unused = set(texts) - used
    if unused:
        raise KeyError(f"docstring has no placeholder for {sorted(unused)}")
    return filled


def doc_params(**texts: str) -> Callable[[F], F]:
    """Decorator filling the placeholders ``{name}`` of a docstring with the shared ``texts``."""

    def decorate(obj: F) -> F:
        obj.__doc__ = fill_doc(obj.__doc__ or "", texts)
        return obj

    return decorate
