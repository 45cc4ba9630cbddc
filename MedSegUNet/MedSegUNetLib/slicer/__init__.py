"""The Slicer side: the only package that touches MRML or Qt. Imports ``engine``, ``models`` and ``cohorts``.

- ``logic``: ``SegmentationLogic`` on a ``vtkMRMLScene`` (volume nodes ↔ images, results as nodes).
- ``modulelogic``: what ``MedSegUNetLogic`` does, without Qt; ``widget``: the module's GUI.
- ``worker``, ``jobfiles``: the network in a worker process (``PythonSlicer``), its files.
- ``dependencies``: installing PyTorch and the rest without replacing Slicer's packages.
- ``selftest``: the known-answer self-test scenario.

Modules here import ``slicer`` (the application's package) absolutely: this package's name does not
shadow it.
"""

__all__ = ["dependencies", "jobfiles", "logic", "modulelogic", "selftest", "widget", "worker"]
