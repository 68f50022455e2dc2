"""Readers of the user's own files: Cell Ranger, STARsolo, junction tables, transcript counts.

- :func:`read_cellranger`: a Cell Ranger run with CRISPR Guide Capture → MuData with ``rna``,
  ``guides`` and the guide labels in ``obs``.
- :func:`read_starsolo_junctions`: STARsolo ``Solo.out/SJ`` → cells × junctions AnnData for
  :func:`~dream_sc.pp.splicing_from_junctions`.
- :func:`read_junction_table`: a long or wide junction-count table (regtools / leafcutter
  style, 0- or 1-based).
- :func:`read_transcript_counts`: any cells × transcripts table plus a transcript → gene map,
  for :func:`~dream_sc.pp.isoform_usage`.

Formats, columns and coordinate conventions are described in ``docs/reading_files.md``.
"""

from ._cellranger import read_cellranger
from ._junction_table import read_junction_table
from ._starsolo import read_starsolo_junctions
from ._transcripts import read_transcript_counts

__all__ = [
    "read_cellranger",
    "read_junction_table",
    "read_starsolo_junctions",
    "read_transcript_counts",
]
