# Stand-in: packaging is not exercised by the fake configuration.
_fake_slicer_record(CPACK "${PROJECT_NAME}")
