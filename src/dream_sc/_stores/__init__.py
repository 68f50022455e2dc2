"""One store per result kind: the only code that knows where stored results live.

- :mod:`~dream_sc._stores.technical`, :mod:`~dream_sc._stores.cis`,
  :mod:`~dream_sc._stores.trans`, :mod:`~dream_sc._stores.screen`: the writer (stamping
  ``kind`` and ``schema_version``) and the validating readers of one kind each;
- :mod:`~dream_sc._stores._keys`: the key and column names of every kind (``TransKeys(key)
  .curve("mean")``, ``CisKeys(key).samples``, ...), also used by :mod:`dream_sc._record_checks`;
- :mod:`~dream_sc._stores._common`: :func:`stamp`, :func:`record_kind`, :func:`stored_fits`.

``get``, ``pl`` and ``tl`` import from the kind modules and never build key strings. This
``__init__`` imports nothing, so :mod:`dream_sc._record_checks` can use the key names without
an import cycle.
"""
