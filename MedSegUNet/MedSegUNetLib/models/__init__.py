"""Models: where they come from and how they are made. Imports ``engine`` only.

- ``catalog``: the model catalog, downloads, ``--model NAME``.
- ``importing`` (with ``networks``): ONNX graphs, Auto3DSeg checkpoints and MONAI bundles as
  verified TorchScript models; networks built as data from allow-listed MONAI classes.
- ``training``, ``exporting``: ``medsegunet train`` and ``export``.
- ``phantoms``: known-answer volumes and threshold models for tests and the self-test.
"""

__all__ = ["catalog", "exporting", "importing", "networks", "phantoms", "training"]
