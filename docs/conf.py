"""Sphinx configuration of the dream_sc documentation.

Build (what CI runs): ``sphinx-build -W --keep-going -b html docs docs/_build/html``.

The build works offline. Intersphinx links to anndata, mudata, scanpy, Pyro, PyTorch, NumPy and
pandas need the inventories from the internet, so intersphinx is only switched on when
``DREAM_SC_DOCS_ONLINE=1`` is set, or on Read the Docs (which sets ``READTHEDOCS=True``).

The tutorial notebooks live in ``tutorials/`` at the repository root, stored without outputs.
They are copied into ``docs/_generated_tutorials/`` at the start of every build and executed by
myst-nb, so the pages show their figures and tables; a notebook error fails the build (this is
CI's notebook test). ``DREAM_SC_NB_EXECUTION=cache`` reuses unchanged notebooks' outputs
between local builds (jupyter-cache keys on the notebook only, not on the package code, so CI
always forces execution); ``off`` renders them without outputs.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import warnings
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

# sphinx-autodoc-typehints 3.x calls an API that Sphinx 9 deprecates; not ours to fix.
warnings.filterwarnings(
    "ignore", message=".*set_application.*is deprecated", module="sphinx_autodoc_typehints.*"
)

# -- project -------------------------------------------------------------------------------

project = "dream_sc"
author = "dream_sc developers"
copyright = f"{date.today().year}, {author}"
try:
    release = _pkg_version("dream_sc")
except PackageNotFoundError:  # building from a source tree without an install
    release = "0.0.0"
version = release

# -- extensions ----------------------------------------------------------------------------

ONLINE = (
    os.environ.get("DREAM_SC_DOCS_ONLINE", "0") == "1" or os.environ.get("READTHEDOCS") == "True"
)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
if ONLINE:
    extensions.append("sphinx.ext.intersphinx")

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "pyro": ("https://docs.pyro.ai/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
}
intersphinx_timeout = 10

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
    "requirements.txt",
]
templates_path: list[str] = []

# -- MyST / myst-nb ------------------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
myst_dmath_double_inline = True
nb_execution_mode = os.environ.get("DREAM_SC_NB_EXECUTION", "force")
# The kernels inherit this process's environment; a non-interactive MPLBACKEND (CI exports
# MPLBACKEND=agg) would keep ipykernel from choosing its inline backend and the pages would
# show no figures.
os.environ.pop("MPLBACKEND", None)
nb_execution_raise_on_error = True  # a failing notebook fails the build (CI's notebook test)
nb_execution_timeout = 1800  # seconds per cell; the slowest tutorial cell takes a few minutes
nb_execution_show_tb = True
nb_merge_streams = True

# -- autodoc / autosummary / napoleon ------------------------------------------------------

autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
# "Returns" sections of dream_sc describe what is *written* (keys, columns), as prose and
# lists; render them verbatim under a "Returns" heading instead of parsing "name : type" pairs.
napoleon_custom_sections = ["Returns"]
typehints_document_rtype = False
typehints_use_signature = False
always_document_param_types = False

# -- HTML ----------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"dream_sc {release}"
html_static_path: list[str] = []

# -- tutorials: copy ../tutorials/*.ipynb into _generated_tutorials/ ----------------------

TUTORIALS_SRC = ROOT / "tutorials"
TUTORIALS_DST = HERE / "_generated_tutorials"


def copy_tutorials(app=None) -> list[str]:
    """Mirror ``tutorials/*.ipynb`` into ``docs/_generated_tutorials/`` (unchanged files kept).

    Files are only rewritten when their content changed, so incremental builds stay
    incremental; notebooks removed from ``tutorials/`` are removed from the mirror.
    """
    TUTORIALS_DST.mkdir(exist_ok=True)
    wanted = sorted(TUTORIALS_SRC.glob("*.ipynb"))
    names = {p.name for p in wanted}
    for stale in TUTORIALS_DST.glob("*.ipynb"):
        if stale.name not in names:
            stale.unlink()
    for src in wanted:
        dst = TUTORIALS_DST / src.name
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            shutil.copy2(src, dst)
    return [p.stem for p in wanted]


def check_api_coverage(app) -> None:
    """Warn (an error under ``-W``) when a public function is missing from ``api.md``."""
    from sphinx.util import logging as sphinx_logging

    import dream_sc

    log = sphinx_logging.getLogger("dream_sc.docs")
    text = (HERE / "api.md").read_text(encoding="utf-8")
    for module in ("pp", "tl", "pl", "get", "datasets"):
        sub = getattr(dream_sc, module)
        for name in getattr(sub, "__all__", []):
            if f"{module}.{name}\n" not in text:
                log.warning(
                    "dream_sc.%s.%s is public (in __all__) but not listed in docs/api.md; add it "
                    "to the autosummary of dream_sc.%s.",
                    module,
                    name,
                    module,
                )


def drop_returns_colon(app, what, name, obj, options, lines) -> None:
    """Undo the ``:`` sphinx-autodoc-typehints inserts under a numpy "Returns" header.

    That marker makes napoleon parse the section as a typed return value; dream_sc renders its
    Returns sections verbatim (``napoleon_custom_sections``), so the marker would show up as a
    stray colon.
    """
    for pos in range(len(lines) - 2):
        if lines[pos].strip().lower() == "returns" and set(lines[pos + 1].strip()) == {"-"}:
            if lines[pos + 2] == ":":
                del lines[pos + 2]
            return


def setup(app) -> None:
    """Copy tutorials before sources are read; check the API page lists every function."""
    # sphinx-autodoc-typehints inserts its marker at priority 499; napoleon parses at 500.
    app.connect("autodoc-process-docstring", drop_returns_colon, priority=499)
    app.connect("builder-inited", lambda app: copy_tutorials(app), priority=100)
    app.connect("builder-inited", check_api_coverage, priority=100)
