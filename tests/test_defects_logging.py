"""The package logger propagates to the application's logging (issue 16)."""

from __future__ import annotations

import logging
import re

import pytest

import dream_sc as ds


@pytest.fixture
def restore_verbosity():
    before = ds.settings.verbosity
    yield
    ds.settings.verbosity = before


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_logger_propagates_to_caplog(tiny_screen, caplog, restore_verbosity):
    assert logging.getLogger("dream_sc").propagate
    mdata = tiny_screen.copy()
    ds.settings.verbosity = 2
    assert logging.getLogger("dream_sc").propagate
    with caplog.at_level(logging.INFO):  # the root logger, as an application would configure
        ds.pp.sum_factors(mdata, key_added="sf_test")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("dream_sc", logging.INFO, "size factors written to mdata.obs['sf_test'] from 'rna'")
    ]


def test_root_handler_sees_messages_and_verbosity_filters(tiny_screen, restore_verbosity):
    root = logging.getLogger()
    handler = ListHandler()
    root.addHandler(handler)
    try:
        mdata = tiny_screen.copy()
        ds.settings.verbosity = 2
        ds.pp.sum_factors(mdata, key_added="sf_a")
        ds.settings.verbosity = 1  # warnings only: the info line is not emitted
        ds.pp.sum_factors(mdata, key_added="sf_b")
    finally:
        root.removeHandler(handler)
    messages = [r.getMessage() for r in handler.records if r.name == "dream_sc"]
    assert messages == ["size factors written to mdata.obs['sf_a'] from 'rna'"]


def test_unset_verbosity_leaves_the_level_to_the_application(restore_verbosity):
    ds.settings.verbosity = None
    assert logging.getLogger("dream_sc").level == logging.NOTSET
    ds.settings.verbosity = 3
    assert logging.getLogger("dream_sc").level == logging.DEBUG
    with pytest.raises(
        ValueError, match=re.escape("verbosity must be None or one of 0, 1, 2, 3; got 5.")
    ):
        ds.settings.verbosity = 5
    assert ds.settings.verbosity == 3
