"""ctest entry point: the MedSegUNet self-test scenario inside Slicer (``MedSegUNetLib/selftest.py``)."""

import tempfile
import unittest

import slicer


class MedSegUNetSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_KnownAnswerPhantom(self):
        # The logic class directly: slicer.util.getModuleLogic would build the module's widget first.
        from MedSegUNet import MedSegUNetLogic

        logic = MedSegUNetLogic()
        self.assertTrue(logic.ensureDependencies(askConfirmation=False))
        from MedSegUNetLib import selftest

        with tempfile.TemporaryDirectory() as directory:
            figures = selftest.runSelfTestScenario(slicer.mrmlScene, directory)
        self.assertEqual(figures["voxelCounts"], {"outer": 1633, "inner": 178})


def runTest():
    unittest.main(module=__name__, argv=["MedSegUNetSelfTest"], exit=False)


if __name__ == "__main__":
    runTest()
