"""Cohorts: many cases, one job contract. Imports ``engine`` and ``models``.

- ``seriesmatch``: which series of a study folder is which input.
- ``batch``: cases from folders, CSV tables and Decathlon ``dataset.json``; the case job, its
  files and the summary; local worker processes.
- ``raybatch``: the same case job on Ray actors.
"""

__all__ = ["batch", "raybatch", "seriesmatch"]
