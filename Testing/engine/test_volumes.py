"""Reading volumes with their full geometry, DICOM series selection, bad input and atomic outputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from MedSegUNetLib.engine import paths, staging, volumes
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.models import phantoms

OBLIQUE = phantoms.rotationMatrix((1, 0.3, 0), 18) @ np.diag([1.0, 1.0, 1.0])
LEFT_HANDED = phantoms.rotationMatrix((0, 0, 1), 20) @ np.diag([1.0, -1.0, 1.0])


def phantomVolume(direction=OBLIQUE, pixelType=sitk.sitkInt16) -> sitk.Image:
    grid = phantoms.makeGrid((12, 10, 7), (0.5, 0.6, 3.0), direction, (10.0, -20.0, 30.0))
    return sitk.Cast(phantoms.paintSpheres(grid, [((10.0, -20.0, 30.0), 3.0, 100.0)]), pixelType)


# [parameters (suffix, direction), input shape, expected (geometry kept)]
@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [OBLIQUE, LEFT_HANDED], ids=["oblique", "left-handed"])
def test_read_keeps_geometry(tmp_path, suffix, direction):
    image = phantomVolume(direction)
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))
    read = volumes.readVolume(path)
    assert read.GetSize() == (12, 10, 7)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    assert volumes.volumeName(path) == "volume"


def test_read_dicom_series_folder(prostate_series):
    image = volumes.readVolume(prostate_series["4-t2tsetra"])
    assert image.GetSize() == (384, 384, 19)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 3.0), atol=1e-5)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    # The axial series is tilted about 18° from the scanner axes.
    tilt = np.degrees(np.arccos(abs(direction[2, 2])))
    assert 17.0 < tilt < 19.0
    assert volumes.volumeName(prostate_series["4-t2tsetra"]) == "4-t2tsetra"


def test_multi_series_folder_needs_a_choice(shared_data):
    folder = str(shared_data / "prostatex" / "ProstateX-0000")
    found = volumes.findDicomSeries(folder)
    assert sorted(s.description for s in found) == sorted(["t2_tse_sag", "t2_tse_tra", "t2_tse_cor", "ep2d_diff_tra_DYNDIST_ADC"])
    with pytest.raises(MedSegUNetError) as error:
        volumes.readVolume(folder)
    message = str(error.value)
    assert "\n" not in message and "holds 4 DICOM series" in message
    # The line says how to choose, with a choice that works as printed.
    example = message.split("such as '", 1)[1].split("':", 1)[0]
    assert "FOLDER::SERIES" in message and example.startswith(f"{folder}::")
    assert volumes.readVolume(example).GetDimension() == 3
    for series in found:
        assert series.description in message and series.uid in message
    # Pick by description, by UID, by sub-folder name, and with FOLDER::SERIES.
    tra = next(s for s in found if s.description == "t2_tse_tra")
    for choice in ("t2_tse_tra", tra.uid, "4-t2tsetra"):
        assert volumes.readVolume(folder, series=choice).GetSize() == (384, 384, 19)
    adc = volumes.readVolume(f"{folder}::ep2d_diff_tra_DYNDIST_ADC")
    assert adc.GetSize() == (84, 128, 19)
    assert volumes.volumeName(f"{folder}::t2_tse_cor") == "ProstateX-0000:t2_tse_cor"
    with pytest.raises(MedSegUNetError, match="matches no DICOM series.*t2_tse_sag"):
        volumes.readVolume(folder, series="t1_vibe")


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MedSegUNetError, match="No DICOM series found"):
        volumes.readVolume(tmp_path)


def assertOneLine(error) -> str:
    message = str(error.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_nan_voxels_are_refused(tmp_path):
    image = phantomVolume(pixelType=sitk.sitkFloat32)
    image[3, 4, 2] = float("nan")
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(MedSegUNetError) as error:
        volumes.readVolume(path)
    assert "NaN" in assertOneLine(error)
    image[3, 4, 2] = float("inf")
    sitk.WriteImage(image, str(path))
    with pytest.raises(MedSegUNetError, match="NaN or infinite"):
        volumes.readVolume(path)


def test_4d_volume_is_refused(tmp_path):
    path = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.Image([5, 5, 5, 3], sitk.sitkFloat32), str(path))
    with pytest.raises(MedSegUNetError) as error:
        volumes.readVolume(path)
    assert "4 dimensions" in assertOneLine(error)


def test_vector_volume_is_refused(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([5, 5, 5], sitk.sitkVectorFloat32, 3), str(path))
    with pytest.raises(MedSegUNetError) as error:
        volumes.readVolume(path)
    assert "3 components" in assertOneLine(error)


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image([5, 5], sitk.sitkUInt8), str(path))
    with pytest.raises(MedSegUNetError, match="2 dimensions"):
        volumes.readVolume(path)


def test_missing_unsupported_and_corrupt_files(tmp_path):
    with pytest.raises(MedSegUNetError) as error:
        volumes.readVolume(tmp_path / "absent.nrrd")
    assert "does not exist" in assertOneLine(error)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(MedSegUNetError, match="not a volume file"):
        volumes.readVolume(text)
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00\x01")
    with pytest.raises(MedSegUNetError) as error:
        volumes.readVolume(corrupt)
    assert "is cut short" in assertOneLine(error)  # found before ITK reads it


@pytest.mark.parametrize(
    "path, expected", [("a/b/T2.nii.gz", ".nii.gz"), ("x.SEG.NRRD", ".seg.nrrd"), ("y.nrrd", ".nrrd"), ("z.mha", ".mha"), ("folder", "")]
)
def test_path_suffix(path, expected):
    assert paths.pathSuffix(path) == expected


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nrrd"
    with pytest.raises(RuntimeError):
        with staging.atomicOutput(target) as temporary:
            # Staged under a hidden folder beside the destination, with the final name.
            assert os.path.dirname(os.path.dirname(temporary)) == str(tmp_path) and os.path.basename(temporary) == "out.nrrd"
            with open(temporary, "wb") as stream:
                stream.write(b"partial")
            raise RuntimeError("writer failed half way")
    assert os.listdir(tmp_path) == []


def test_atomic_output_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(ValueError):
        with staging.atomicOutput(target) as temporary:
            with open(temporary, "w") as stream:
                stream.write("new")
            raise ValueError
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.csv"]


def test_write_volume_and_text(tmp_path):
    image = phantomVolume()
    staging.writeVolume(image, tmp_path / "v.nii.gz")
    staging.writeText("a,b\n", tmp_path / "t.csv")
    assert sorted(os.listdir(tmp_path)) == ["t.csv", "v.nii.gz"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volumes.readVolume(tmp_path / "v.nii.gz")), sitk.GetArrayFromImage(image))


def test_output_in_missing_folder(tmp_path):
    with pytest.raises(MedSegUNetError, match="does not exist"):
        staging.writeText("x", tmp_path / "missing" / "t.csv")
    with pytest.raises(MedSegUNetError, match="must end with one of"):
        staging.checkOutputPath(tmp_path / "seg.png", (".nrrd",))
    assert os.listdir(tmp_path) == []


# [parameters (errno), input (an OSError while writing), expected (what to do, in words)]
@pytest.mark.parametrize(
    "number, expected",
    [(28, "the disk is full"), (27, "file-size limit"), (30, "read-only"), (13, "permission denied"), (21, "it is a folder")],
    ids=["ENOSPC", "EFBIG", "EROFS", "EACCES", "EISDIR"],
)
def test_os_errors_say_what_to_do(number, expected):
    from MedSegUNetLib.engine.errors import osErrorMessage

    message = osErrorMessage(OSError(number, os.strerror(number)), "write", "/data/out/seg.nii.gz")
    assert message.startswith("Cannot write '/data/out/seg.nii.gz': ") and expected in message and "\n" not in message


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    image = phantomVolume()
    with pytest.raises(MedSegUNetError, match="reads back different"):
        with staging.StagedOutputs() as outputs:
            staging.writeImageFile(image, outputs.stage(tmp_path / "a.nrrd", verify=staging.imageVerifier(image)))
            other = outputs.stage(tmp_path / "b.nrrd", verify=staging.imageVerifier(image))
            staging.writeImageFile(sitk.Cast(image, sitk.sitkInt16) * 0, other)  # not what was meant
    assert os.listdir(tmp_path) == []
    with staging.StagedOutputs() as outputs:
        staging.writeImageFile(image, outputs.stage(tmp_path / "a.mhd", verify=staging.imageVerifier(image)))
        staging.writeTextFile("x\n", outputs.stage(tmp_path / "a.txt", verify=staging.textVerifier("x\n")))
    assert sorted(os.listdir(tmp_path)) == ["a.mhd", "a.raw", "a.txt"] or sorted(os.listdir(tmp_path)) == ["a.mhd", "a.txt", "a.zraw"]
