# Stand-in: records the extension's metadata variables as Slicer's description file would get them.
foreach(var HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS)
  _fake_slicer_record("EXTENSION_${var}" "${EXTENSION_${var}}")
endforeach()
