"""``medsegunet batch``: series matching, a real cohort on local workers and on Ray, resume, faults.

The cohort is the two real ProstateX studies (linked into a temporary folder), an oblique phantom
study of NRRD files named by series, and a broken study. The model is a known-answer threshold
model whose card asks for the axial T2 and limits the ROI with the sagittal and coronal T2, so
every case's labels can be compared with ``segment`` on the same series.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PROSTATEX_0000_ROI, medsegunetCommand, requireSharedData, slowThresholdModel
from MedSegUNetLib import cli
from MedSegUNetLib.cohorts.cases import casesFromSource, dryRunTable
from MedSegUNetLib.cohorts.seriesmatch import SeriesCandidate, matchSeries, words
from MedSegUNetLib.engine import geometry
from MedSegUNetLib.engine.errors import MedSegUNetError
from MedSegUNetLib.engine.modelcard import readCard, saveModel
from MedSegUNetLib.engine.preview import qcTile
from MedSegUNetLib.engine.volumes import readVolume
from MedSegUNetLib.models import phantoms

LEVEL = 400.0
LABELS = [(1, "bright", (1.0, 1.0, 0.0))]


def command() -> list[str]:
    return medsegunetCommand()


# ---------------------------------------------------------------------------------------------
# Series matching


def candidate(name: str, plane: str | None = None) -> SeriesCandidate:
    return SeriesCandidate(path=f"/study/{name}", name=name, words=words(name), plane=plane)


PROSTATE_CARD = {"inputs": [{"name": "T2", "match": ["t2", "tra"]}], "roi": {"from_series": ["t2 sag", "t2 cor"]}}
BRAIN_CARD = {
    "inputs": [
        {"name": "T1", "match": ["t1"]},
        {"name": "T1c", "match": ["t1c", "t1ce", "contrast"]},
        {"name": "T2", "match": ["t2"]},
        {"name": "FLAIR", "match": ["flair", "fla", "t2f"]},
    ]
}


# [parameters (card), input (series: name and measured plane), expected (inputs, ROI series, or the error's words)]
MATCH_CASES = [
    pytest.param(
        PROSTATE_CARD,
        [("t2_tse_tra", "tra"), ("t2_tse_sag", "sag"), ("t2_tse_cor", "cor"), ("ep2d_diff_tra_ADC", "tra")],
        (["t2_tse_tra"], ["t2_tse_sag", "t2_tse_cor"]),
        id="prostatex-descriptions",
    ),
    pytest.param(
        PROSTATE_CARD,
        [("4-t2tsetra", "tra"), ("3-t2tsesag", "sag"), ("5-t2tsecor", "cor")],
        (["4-t2tsetra"], ["3-t2tsesag", "5-t2tsecor"]),
        id="prostatex-folder-names",
    ),
    pytest.param(
        PROSTATE_CARD,
        [("T2 axial", "tra"), ("T2 sagittal", "sag"), ("T2 coronal", "cor")],
        (["T2 axial"], ["T2 sagittal", "T2 coronal"]),
        id="plain-words",
    ),
    # A series named "tra" but acquired sagittally is not the axial T2, whatever its name says.
    pytest.param(
        PROSTATE_CARD,
        [("t2_tra", "sag"), ("t2_tra_2", "tra"), ("t2_cor", "cor")],
        (["t2_tra_2"], ["t2_tra", "t2_cor"]),
        id="plane-beats-name",
    ),
    pytest.param(
        PROSTATE_CARD, [("t2_tse_tra", "tra"), ("t2_tse_tra_repeat", "tra")], "several series match equally", id="ambiguous-repeat"
    ),
    pytest.param(PROSTATE_CARD, [("t1_vibe", "tra"), ("dwi", "tra")], "no series matches", id="missing-input"),
    pytest.param(
        PROSTATE_CARD, [("t2_tse_tra", "tra"), ("t2_tse_sag", "sag")], (["t2_tse_tra"], ["t2_tse_sag"]), id="missing-roi-series-runs"
    ),
    pytest.param(
        BRAIN_CARD,
        [("BraTS-t1n", "tra"), ("BraTS-t1c", "tra"), ("BraTS-t2w", "tra"), ("BraTS-t2f", "tra")],
        (["BraTS-t1n", "BraTS-t1c", "BraTS-t2w", "BraTS-t2f"], []),
        id="brats-2023-names",
    ),
    pytest.param(
        BRAIN_CARD,
        [("t1", None), ("t1c", None), ("t2", None), ("flair", None)],
        (["t1", "t1c", "t2", "flair"], []),
        id="tcga-names-no-plane",
    ),
]


@pytest.mark.parametrize("card, series, expected", MATCH_CASES)
def test_series_matching(card, series, expected):
    candidates = [candidate(name, plane) for name, plane in series]
    if isinstance(expected, str):
        with pytest.raises(MedSegUNetError) as error:
            matchSeries(card, candidates, "case7")
        message = str(error.value)
        assert expected in message and "case7" in message and "\n" not in message
        for name, _ in series:
            assert name in message  # the line names the candidates
        return
    match = matchSeries(card, candidates)
    assert [c.name for c in match.inputs] == expected[0]
    assert [c.name for c in match.roi] == expected[1]
    assert len(match.notes) == len(card.get("roi", {}).get("from_series", [])) - len(expected[1])


# ---------------------------------------------------------------------------------------------
# A cohort


def _orientedPhantom(folder, name: str, direction: np.ndarray) -> None:
    grid = phantoms.makeGrid((40, 36, 12), (1.0, 1.0, 3.0), direction, (0.0, 0.0, 0.0))
    sitk.WriteImage(
        phantoms.paintSpheres(grid, [((2.0, 1.0, 0.0), 9.0, 1000.0), ((-8.0, 0.0, 3.0), 4.0, 600.0)]), str(folder / f"{name}.nrrd")
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four studies: ProstateX-0000 and -0001 (links), an oblique phantom of NRRD files, a broken one."""
    root = tmp_path_factory.mktemp("cohort")
    cases = root / "cases"
    cases.mkdir()
    for name in ("ProstateX-0000", "ProstateX-0001"):
        os.symlink(requireSharedData("prostatex", name), cases / name)
    phantom = cases / "phantom"
    phantom.mkdir()
    tilt = phantoms.rotationMatrix((1, 1, 0), 10)
    # Columns are the i, j, k axes in LPS; k is the slice normal: S (axial), L (sagittal), P (coronal).
    _orientedPhantom(phantom, "t2_tra", tilt @ np.eye(3))
    _orientedPhantom(phantom, "t2_sag", tilt @ np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float))
    _orientedPhantom(phantom, "t2_cor", tilt @ np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float) @ np.diag([1, 1, -1]))
    broken = cases / "broken"
    broken.mkdir()
    (broken / "t2_tra.nrrd").write_text("not an image")
    card = phantoms.thresholdCard(LABELS, inputs=("T2",), patchSize=(96, 96, 16))
    card["inputs"][0]["match"] = ["t2", "tra"]
    card["roi"] = {"from_series": ["t2 sag", "t2 cor"]}
    model = root / "threshold.pt"
    saveModel(phantoms.thresholdModule((LEVEL,)), card, model)
    return {"root": root, "cases": cases, "model": str(model), "card": card}


def readLabels(path) -> np.ndarray:
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    return segmentation["voxels"]


def test_dry_run_prints_the_table_and_changes_nothing(capsys, cohort, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["batch", "--model", cohort["model"], "--cases", str(cohort["cases"]), "--output", str(out), "--dry-run"])
    captured = capsys.readouterr()
    # Every case has its input: the broken file is named like an axial T2 (it fails when read).
    assert code == 0
    lines = [line.split("\t") for line in captured.out.strip().splitlines()]
    assert lines[0] == ["case", "T2", "ROI t2 sag", "ROI t2 cor", "status"]
    table = {line[0]: line for line in lines[1:]}
    assert table["ProstateX-0000"][1].endswith("4-t2tsetra") and table["ProstateX-0000"][2].endswith("3-t2tsesag")
    assert table["phantom"][1:4] == [str(cohort["cases"] / "phantom" / f"t2_{p}.nrrd") for p in ("tra", "sag", "cor")]
    assert table["broken"][1].endswith("t2_tra.nrrd") and "ROI series 't2 sag': no series matches" in table["broken"][4]
    assert not out.exists()


def test_cohort_on_local_workers(capsys, cohort, tmp_path):
    import datetime

    out = tmp_path / "out"
    argv = ["batch", "--model", cohort["model"], "--cases", str(cohort["cases"]), "--output", str(out), "--device", "cpu"]
    began = datetime.datetime.now(datetime.timezone.utc)
    code = cli.main(argv)
    ended = datetime.datetime.now(datetime.timezone.utc)
    captured = capsys.readouterr()
    assert code == 1, captured.err
    errors = captured.err.strip().splitlines()
    assert errors[-1].startswith("medsegunet: 1 of 4 cases failed") and "broken" in errors[0]
    assert captured.out.strip().splitlines()[-1] == "4 cases: 3 ok, 0 skipped, 1 failed"
    assert sorted(os.listdir(out)) == ["ProstateX-0000", "ProstateX-0001", "phantom", "qc.png", "summary.csv"]
    with open(out / "summary.csv", newline="") as stream:
        rows = {row["case"]: row for row in csv.DictReader(stream)}
    assert rows["broken"]["status"] == "failed" and "Cannot read volume" in rows["broken"]["message"]
    assert {rows[c]["status"] for c in ("ProstateX-0000", "ProstateX-0001", "phantom")} == {"ok"}
    assert float(rows["ProstateX-0000"]["roi_size_i_mm"]) == pytest.approx(137 * 0.5)
    # When each case ended, failed ones included: the run's audit trail and throughput.
    assert all(began <= datetime.datetime.fromisoformat(row["finished"]) <= ended for row in rows.values())

    # Each case equals 'segment' on the same series.
    for case, (tra, sag, cor) in {
        "ProstateX-0000": ("4-t2tsetra", "3-t2tsesag", "5-t2tsecor"),
        "phantom": ("t2_tra.nrrd", "t2_sag.nrrd", "t2_cor.nrrd"),
    }.items():
        folder = cohort["cases"] / case
        single = tmp_path / f"{case}.seg.nrrd"
        assert (
            cli.main(
                [
                    "segment",
                    "-q",
                    "--model",
                    cohort["model"],
                    str(folder / tra),
                    "--roi-from",
                    str(folder / sag),
                    str(folder / cor),
                    "--output",
                    str(single),
                ]
            )
            == 0
        )
        np.testing.assert_array_equal(readLabels(out / case / f"{case}.seg.nrrd"), readLabels(single))
        report = json.loads((out / case / f"{case}-statistics.json").read_text())
        assert report["roi"]["volumes"][1:] == [os.path.splitext(sag)[0], os.path.splitext(cor)[0]]
        assert sorted(os.listdir(out / case)) == sorted(
            [f"{case}.seg.nrrd", f"{case}-statistics.csv", f"{case}-statistics.json", f"{case}-qc.png", "manifest.json"]
        )
        # The QC tile is the ROI slice where the labels are largest, drawn by qcTile, as an RGB PNG (written without matplotlib).
        labelmap = sitk.ReadImage(str(single))
        reference = readVolume(str(folder / tra))
        roi = geometry.RegionOfInterest(
            reference=geometry.VolumeGeometry.fromImage(reference),
            ijkMin=np.array(report["roi"]["ijk_min"]),
            ijkMax=np.array(report["roi"]["ijk_max"]),
        )
        tile = sitk.ReadImage(str(out / case / f"{case}-qc.png"))
        assert tile.GetSize() == (256, 256) and tile.GetNumberOfComponentsPerPixel() == 3
        np.testing.assert_array_equal(sitk.GetArrayFromImage(tile), qcTile(reference, labelmap, roi, readCard(cohort["model"])))
    capsys.readouterr()
    report = json.loads((out / "ProstateX-0000" / "ProstateX-0000-statistics.json").read_text())
    assert report["roi"]["ijk_min"] == list(PROSTATEX_0000_ROI[0]) and report["roi"]["ijk_max"] == list(PROSTATEX_0000_ROI[1])

    # A rerun skips the finished cases (same model, same inputs); --force redoes them.
    first = rows
    before = (out / "phantom" / "manifest.json").stat().st_mtime_ns
    assert cli.main(argv) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "4 cases: 0 ok, 3 skipped, 1 failed"
    # A skipped case's line gives the earlier run's date and time, not as if it had just run.
    finished, seconds = first["phantom"]["finished"], float(first["phantom"]["seconds"])
    assert f"phantom: skipped (done on {finished[:10]} {finished[11:16]} UTC in {seconds:.1f} s)" in [
        line.split("] ", 1)[-1] for line in lines
    ]
    assert (out / "phantom" / "manifest.json").stat().st_mtime_ns == before
    with open(out / "summary.csv", newline="") as stream:
        rows = {row["case"]: row for row in csv.DictReader(stream)}
    assert rows["phantom"]["status"] == "skipped" and rows["phantom"]["volume_cm3 (bright)"] != ""
    # One volume, one formatting: the summary's cell is the case statistics table's cell, in both runs.
    with open(out / "phantom" / "phantom-statistics.csv", newline="") as stream:
        (statistics,) = [row for row in csv.DictReader(stream) if row["Segment"] == "bright"]
    assert rows["phantom"]["volume_cm3 (bright)"] == first["phantom"]["volume_cm3 (bright)"] == statistics["Volume [cm3]"]
    # A resumed row keeps what the run that made the case said: seconds, attempts, when it finished.
    assert [rows["phantom"][key] for key in ("seconds", "attempts", "finished")] == [
        first["phantom"][key] for key in ("seconds", "attempts", "finished")
    ]
    assert cli.main([*argv, "--force", "-q", "--threads", "1"]) == 1
    assert (out / "phantom" / "manifest.json").stat().st_mtime_ns != before
    np.testing.assert_array_equal(
        readLabels(out / "ProstateX-0000" / "ProstateX-0000.seg.nrrd"), readLabels(tmp_path / "ProstateX-0000.seg.nrrd")
    )
    assert not [name for name in os.listdir(out) if name.startswith(".medsegunet")]


# [parameters (an option's value), input (the cohort), expected (words of the one line)]
@pytest.mark.parametrize(
    "option, expected",
    [
        (["--workers", "0"], "--workers must be 1 to 256"),
        (["--threads", "0"], "--threads must be 1 to 1024"),
        (["--workers", str(10**12)], "--workers must be 1 to 256"),
        (["--threads", str(10**12)], "--threads must be 1 to 1024"),
        (["--ray-address", "127.0.0.1:1"], "--ray-address needs --engine ray"),
    ],
)
def test_batch_option_refusals(capsys, cohort, tmp_path, option, expected):
    out = tmp_path / "out"
    assert cli.main(["batch", "--model", cohort["model"], "--cases", str(cohort["cases"]), "--output", str(out), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_cohort_on_ray_gives_identical_labels(capsys, cohort, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    local, remote = tmp_path / "local", tmp_path / "ray"
    cases = str(cohort["cases"])
    assert cli.main(["batch", "-q", "--model", cohort["model"], "--cases", cases, "--output", str(local), "--device", "cpu"]) == 1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert (
            cli.main(
                [
                    "batch",
                    "-q",
                    "--model",
                    cohort["model"],
                    "--cases",
                    cases,
                    "--output",
                    str(remote),
                    "--engine",
                    "ray",
                    "--workers",
                    "2",
                    "--device",
                    "cpu",
                ]
            )
            == 1
        )
    finally:
        ray.shutdown()
    capsys.readouterr()
    for case in ("ProstateX-0000", "ProstateX-0001", "phantom"):
        np.testing.assert_array_equal(readLabels(remote / case / f"{case}.seg.nrrd"), readLabels(local / case / f"{case}.seg.nrrd"))
    with open(remote / "summary.csv", newline="") as stream:
        assert [row["status"] for row in csv.DictReader(stream)] == ["ok", "ok", "failed", "ok"]


def test_ray_missing_is_one_line(capsys, cohort, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees
    code = cli.main(
        ["batch", "--model", cohort["model"], "--cases", str(cohort["cases"]), "--output", str(tmp_path / "o"), "--engine", "ray"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install -e ".[ray]"' in err[0]


def test_csv_and_decathlon_sources(tmp_path, cohort):
    phantom = cohort["cases"] / "phantom"
    table = tmp_path / "cases.csv"
    table.write_text(f"case,T2,roi_sag,roi_cor\nP1,{phantom / 't2_tra.nrrd'},{phantom / 't2_sag.nrrd'},\n")
    (case,) = casesFromSource(str(table), cohort["card"])
    assert case.inputs == [(str(phantom / "t2_tra.nrrd"), None)] and case.roi == [str(phantom / "t2_sag.nrrd")]
    decathlon = tmp_path / "msd"
    (decathlon / "imagesTs").mkdir(parents=True)
    shutil.copy(phantom / "t2_tra.nrrd", decathlon / "imagesTs" / "s1.nrrd")
    (decathlon / "dataset.json").write_text(json.dumps({"modality": {"0": "T2"}, "test": ["./imagesTs/s1.nrrd"]}))
    (case,) = casesFromSource(str(decathlon), cohort["card"])
    assert case.id == "s1" and case.inputs == [(str(decathlon / "imagesTs" / "s1.nrrd"), None)]
    assert "s1" in dryRunTable([case], cohort["card"])
    with pytest.raises(MedSegUNetError, match="lacks column"):
        (tmp_path / "bad.csv").write_text("case,ADC\nx,y\n")
        casesFromSource(str(tmp_path / "bad.csv"), cohort["card"])


def test_sigterm_leaves_no_partial_case(cohort, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*command(), "batch", "--model", cohort["model"], "--cases", str(cohort["cases"]), "--output", str(out), "--device", "cpu"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and process.poll() is None
        and not (out.exists() and any(n.startswith(".medsegunet-case-") for n in os.listdir(out)))
    ):
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    if process.returncode in (0, 1):
        pytest.skip("the run ended before a case was being written")
    assert process.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsegunet: terminated;") and "kept whole" in lines[0], stderr
    for entry in os.listdir(out):
        assert not entry.startswith(".medsegunet")
        # Every case folder that exists is complete.
        assert (out / entry / "manifest.json").is_file()


def _slowThresholdModel(path, card) -> str:
    """The threshold model, made slow (seconds per window) by work whose result it discards."""
    return slowThresholdModel(path, card, (LEVEL,), repeats=1000, size=384)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as stream:
            return [int(v) for v in stream.read().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker process through /proc")
def test_a_series_with_a_missing_slice_fails_its_case_in_one_line(cohort, tmp_path):
    """ITK's "Non uniform sampling" warning, printed by a worker's reading thread where it cannot be
    captured, stays off stderr: the case's own one-line reason and the run's count are all there is."""
    cases = tmp_path / "cases"
    gap = cases / "gap" / "t2 tra"
    gap.mkdir(parents=True)
    source = requireSharedData("prostatex", "ProstateX-0000", "4-t2tsetra")
    files = sorted(os.listdir(source))
    for name in files[:9] + files[10:]:
        os.symlink(source / name, gap / name)
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")
    done = subprocess.run(
        [
            *command(),
            "batch",
            "-q",
            "--model",
            cohort["model"],
            "--cases",
            str(cases),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("medsegunet: ") for line in lines), lines
    assert "case gap failed" in lines[0] and "a gap of" in lines[0] and lines[1].startswith("medsegunet: 1 of 2 cases failed")


def test_an_interrupt_while_the_summary_is_written_says_the_cases_are_kept(capsys, cohort, tmp_path, monkeypatch):
    """Ctrl-C after the last case but before summary.csv: the finished case folders are whole on
    disk, and the one line says so (not "nothing was written")."""
    import signal

    from MedSegUNetLib.commands import batch
    from MedSegUNetLib.engine.errors import Interrupted

    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")

    def interrupted(*args, **kwargs):  # the signal handler raises this where the signal lands
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(batch, "writeCohortFiles", interrupted)
    out = tmp_path / "out"
    assert cli.main(["batch", "-q", "--model", cohort["model"], "--cases", str(cases), "--output", str(out), "--device", "cpu"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medsegunet: interrupted; 1 case(s) finished in this run are kept whole"), lines
    assert sorted(os.listdir(out)) == ["phantom"] and len(os.listdir(out / "phantom")) == 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker process through /proc")
def test_a_killed_worker_is_replaced_and_its_case_retried(cohort, tmp_path):
    """The worker is killed when the run's log says it has begun the case (never at a moment chosen
    by timing): the case is charged an attempt, retried on a new worker, and one warning says so."""
    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")
    model = _slowThresholdModel(tmp_path / "slow.pt", cohort["card"])
    out = tmp_path / "out"
    process = subprocess.Popen(
        [*command(), "batch", "--model", model, "--cases", str(cases), "--output", str(out), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed, begun = None, []
    for line in process.stdout:  # a log (stdout is not a terminal): one line per case begun
        if line.startswith("case phantom: begun by worker "):
            begun.append(line.strip())
        if line.startswith("case phantom: begun by worker ") and killed is None:
            assert line.split()[-1] == "1", line  # the worker's number, not its PID
            (killed,) = _workerProcesses(process.pid)
            os.kill(killed, signal.SIGKILL)
    stderr = process.stderr.read()
    process.wait(timeout=300)
    assert killed is not None and process.returncode == 0, stderr
    # The replacement takes the dead worker's number.
    assert begun == ["case phantom: begun by worker 1"] * 2, begun
    with open(out / "summary.csv", newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["status"] == "ok" and row["attempts"] == "2"
    assert not [name for name in os.listdir(out) if name.startswith(".medsegunet")]
    warnings = [line for line in stderr.splitlines() if line.startswith("medsegunet: warning:")]
    assert (
        len(warnings) == 1
        and f"worker 1, PID {killed}" in warnings[0]
        and "SIGKILL" in warnings[0]
        and "phantom are tried once more" in warnings[0]
    ), stderr


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor process through /proc")
def test_a_killed_ray_actor_is_replaced_and_its_case_retried(cohort, tmp_path, monkeypatch):
    """The actor is killed when its case enters the network (the case job's test hook says so, in a
    folder it names), never at a moment chosen by a clock: the case is retried on a new actor."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    import threading

    from MedSegUNetLib.engine.settings import TEST_NETWORK_BEGUN

    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")
    model = _slowThresholdModel(tmp_path / "slow.pt", cohort["card"])
    begun = tmp_path / "begun"
    begun.mkdir()
    monkeypatch.setenv(TEST_NETWORK_BEGUN.name, str(begun))  # before Ray starts: its actors inherit it
    killed: list = []

    def killWhenTheNetworkBegins() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for marker in begun.iterdir():
                pid = int(marker.name.split("-", 1)[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        killer = threading.Thread(target=killWhenTheNetworkBegins, daemon=True)
        killer.start()
        out = tmp_path / "out"
        code = cli.main(
            [
                "batch",
                "-q",
                "--model",
                model,
                "--cases",
                str(cases),
                "--output",
                str(out),
                "--engine",
                "ray",
                "--workers",
                "1",
                "--device",
                "cpu",
            ]
        )
        killer.join(timeout=5)
    finally:
        ray.shutdown()
    assert killed and code == 0
    with open(out / "summary.csv", newline="") as stream:
        (row,) = list(csv.DictReader(stream))
    assert row["status"] == "ok" and row["attempts"] == "2"
    assert len(list(begun.iterdir())) == 2  # the killed actor's and the new one's


def test_readme_batch_commands_with_the_zoo_model(capsys, tmp_path, repo_root):
    """The batch page's two commands (docs/commands/batch.md): two real studies linked into a folder, the prostate zones model."""
    cohortFolder = tmp_path / "cohort"
    cohortFolder.mkdir()
    for name in ("ProstateX-0000", "ProstateX-0001"):
        os.symlink(requireSharedData("prostatex", name), cohortFolder / name)
    model = str(repo_root / "MedSegUNet" / "Resources" / "Models" / "prostate-zones" / "prostate-zones.pt")
    out = tmp_path / "cohort-output"
    assert cli.main(["batch", "--model", model, "--cases", str(cohortFolder), "--output", str(out), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "ProstateX-0001\t" in table and "10-t2tsetra" in table and not out.exists()
    assert cli.main(["batch", "--model", model, "--cases", str(cohortFolder), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "2 cases: 2 ok, 0 skipped, 0 failed"
    with open(out / "summary.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    # The demonstration model's zones on its two cases: a few to a few tens of cm3 each.
    for row in rows:
        assert 5 < float(row["volume_cm3 (peripheral zone)"]) < 40 and 5 < float(row["volume_cm3 (transition zone)"]) < 40
    assert (out / "qc.png").stat().st_size > 10_000


# [parameters (losses so far), input (a dead worker's cases: held, begun), expected (handed out again, charged an attempt)]
@pytest.mark.parametrize(
    "freeLosses, lost, begun, again, charged",
    [
        ({}, {4, 5, 6}, {4, 5}, [6], [4, 5]),  # the queued case cannot have killed the worker
        ({}, {4, 5, 6}, set(), [4, 5, 6], []),  # killed before it began anything
        ({6: 2}, {6}, set(), [], [6]),  # lost unbegun a third time: counted, so the run ends
        ({}, set(), {4}, [], []),  # a begun case already finished elsewhere is not lost
    ],
)
def test_a_dead_workers_cases(freeLosses, lost, begun, again, charged):
    from MedSegUNetLib.cohorts.pool import lostCases

    assert lostCases(lost, begun, dict(freeLosses)) == (again, charged)


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are a Linux feature here")
def test_reading_and_writing_threads_yield_to_the_network():
    """A worker's prefetch and writer threads run 10 nice levels lower; the network's thread keeps its priority."""
    import threading

    from MedSegUNetLib.cohorts.pool import _yieldToTheNetwork

    seen = {}

    def lowered():
        _yieldToTheNetwork()
        seen["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen["thread"] == min(before + 10, 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")
def test_workers_end_when_the_driver_is_killed(cohort, tmp_path):
    """SIGKILL of the batch command (no cleanup runs) leaves no worker computing."""
    cases = tmp_path / "cases"
    cases.mkdir()
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")
    model = _slowThresholdModel(tmp_path / "slow.pt", cohort["card"])
    driver = subprocess.Popen(
        [*command(), "batch", "--model", model, "--cases", str(cases), "--output", str(tmp_path / "out"), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    worker = None
    for line in driver.stdout:
        if line.startswith("case phantom: begun by worker "):
            (worker,) = _workerProcesses(driver.pid)
            break
    assert worker is not None
    driver.kill()
    driver.wait()
    driver.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(worker):
        time.sleep(0.05)
    assert not _running(worker), "the worker outlived its driver"


def _workerProcesses(parent: int) -> list[int]:
    """The PIDs of ``parent``'s worker processes (multiprocessing's spawned children, not its
    resource tracker), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stream:
                parentOf = int(stream.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as stream:
                words = stream.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parentOf == parent and any(b"spawn_main" in word for word in words):
            pids.append(int(entry))
    return pids


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_ray_address_that_does_not_answer_is_one_line(capsys, cohort, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    code = cli.main(
        [
            "batch",
            "-q",
            "--model",
            cohort["model"],
            "--cases",
            str(cohort["cases"]),
            "--output",
            str(tmp_path / "out"),
            "--engine",
            "ray",
            "--ray-address",
            f"127.0.0.1:{port}",
        ]
    )
    assert code == 2 and time.monotonic() - started < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"Cannot join Ray at 127.0.0.1:{port}" in err[0], err


def test_a_rerun_is_keyed_on_what_the_inputs_are_and_on_the_effective_card(capsys, cohort, tmp_path, monkeypatch):
    """Relative paths from one folder, then absolute ones from another: every finished case is
    skipped. A sidecar card that renames a label redoes every case (the model file is unchanged)."""
    import shutil

    cases = tmp_path / "work" / "cohort"
    cases.mkdir(parents=True)
    os.symlink(cohort["cases"] / "phantom", cases / "phantom")
    model = tmp_path / "work" / "model.pt"
    shutil.copy(cohort["model"], model)
    monkeypatch.chdir(tmp_path / "work")
    assert cli.main(["batch", "-q", "--model", "model.pt", "--cases", "cohort", "--output", "out", "--device", "cpu"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "work" / "out"
    argv = ["batch", "--model", str(model), "--cases", str(cases), "--output", str(out), "--device", "cpu"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 cases: 0 ok, 1 skipped, 0 failed"
    card = json.loads(json.dumps(cohort["card"]))
    card["labels"][0]["name"] = "renamed"
    (tmp_path / "work" / "model.pt.json").write_text(json.dumps(card))
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "1 cases: 1 ok, 0 skipped, 0 failed"
    report = json.loads((out / "phantom" / "phantom-statistics.json").read_text())
    assert [segment["name"] for segment in report["segments"]] == ["renamed"]


# [parameters (cores, available memory in GiB), input (cases to run), expected (CPU workers)]
@pytest.mark.parametrize(
    "cores, memoryGiB, cases, expected",
    [
        (2, 22, 6, 2),  # this machine: two single-threaded networks
        (16, 64, 100, 2),
        (2, 22, 1, 1),  # one case: one worker with both cores
        (1, 22, 6, 1),  # one core
        (8, 6, 6, 1),  # memory for one worker's budget only
        (8, None, 6, 2),  # memory unknown (not Linux)
    ],
)
def test_cpu_worker_count(monkeypatch, cores, memoryGiB, cases, expected):
    from MedSegUNetLib.cohorts import pool
    from MedSegUNetLib.engine import inference

    monkeypatch.setattr(pool.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(inference, "availableMemory", lambda device: None if memoryGiB is None else memoryGiB * 1024**3)
    assert pool.cpuWorkerCount(cases) == expected
    assert pool.workerDevices("cpu", None, cases) == ["cpu"] * expected
    assert pool.workerDevices("cpu", 3, cases) == ["cpu"] * 3


# [parameters (workers), input (cases waiting), expected (cases each worker holds, cases left waiting)]
@pytest.mark.parametrize("workers, cases, held, waiting", [(2, 2, [1, 1], 0), (2, 7, [3, 3], 1), (3, 4, [2, 1, 1], 0), (1, 2, [2], 0)])
def test_cases_are_spread_over_the_workers(workers, cases, held, waiting):
    import queue

    from MedSegUNetLib.cohorts.pool import LocalPool

    pool = LocalPool([], list(range(cases)), None, None, None, None)
    for workerId in range(workers):  # the book of started workers; their task queues, plain queues here
        pool.workers[workerId] = (None, "cpu", queue.Queue())
        pool.held[workerId], pool.begun[workerId] = set(), set()
    pool.handOut()
    assert [len(pool.held[workerId]) for workerId in range(workers)] == held
    assert len(pool.pending) == waiting
    assert sorted(index for workerId in range(workers) for index in pool.held[workerId]) == list(range(cases - waiting))


# [parameters (--threads, --workers, cores), input (local workers' devices), expected (threads each)]
@pytest.mark.parametrize(
    "threads, workers, cores, devices, expected",
    [
        (None, None, 2, ["cpu", "cpu"], 1),  # the default CPU run: the two cores shared
        (None, None, 2, ["cpu"], 2),  # a resumed run left one case: its worker takes both
        (None, 4, 16, [], 4),  # Ray: the cores shared among the workers asked for
        (None, None, 16, [], 16),
        (3, None, 16, ["cpu", "cpu"], 3),  # --threads wins
        (None, None, 1, ["cpu", "cpu"], 1),  # never 0
    ],
)
def test_threads_each(monkeypatch, threads, workers, cores, devices, expected):
    import argparse

    from MedSegUNetLib.commands import batch

    monkeypatch.setattr(batch.os, "cpu_count", lambda: cores)
    assert batch.threadsEach(argparse.Namespace(threads=threads, workers=workers), devices) == expected


def test_a_qc_tile_shows_the_structure_and_outlines_overlapping_regions():
    """Whole-volume ROI, a structure on K 9 only: the tile is that slice, not the middle one; nested
    sigmoid regions are both visible (outlines), where painting would hide the inner one."""
    from MedSegUNetLib.engine.geometry import VolumeGeometry, fullROI

    reference = sitk.Image([32, 32, 12], sitk.sitkFloat32)
    roi = fullROI(VolumeGeometry.fromImage(reference))
    inner = np.zeros((12, 32, 32), dtype=bool)
    inner[9, 12:20, 12:20] = True
    outer = np.zeros_like(inner)
    outer[9, 6:26, 6:26] = True
    labelmap = sitk.GetImageFromArray(np.where(outer, 2, 0).astype(np.uint8))
    labels = [{"value": 1, "name": "core", "color": [1.0, 0.0, 0.0]}, {"value": 2, "name": "whole", "color": [0.0, 0.0, 1.0]}]

    def colours(tile):
        return [int(np.all(tile == np.array(colour, dtype=np.uint8), axis=2).sum()) for colour in ((255, 0, 0), (0, 0, 255))]

    red, blue = colours(qcTile(reference, labelmap, roi, {"labels": labels, "output": "sigmoid"}, regions=[inner, outer]))
    assert red > 0 and blue > 0, (red, blue)
    filled = qcTile(reference, labelmap, roi, {"labels": labels, "output": "softmax"})
    assert int((filled[..., 2] > 100).sum()) > 0  # the labelled slice, not the empty middle one
