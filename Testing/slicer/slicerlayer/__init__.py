"""The test layer that runs the module under Slicer's own Python layer (see ``Testing/slicer/upstream/README.md``)."""
