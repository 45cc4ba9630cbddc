# Stand-in for Slicer's UseSlicer.cmake: records that the extension included it.
_fake_slicer_record(USE_SLICER "${PROJECT_NAME}")
