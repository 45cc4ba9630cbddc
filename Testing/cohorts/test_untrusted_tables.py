"""Cohort tables are untrusted: a case name never writes, replaces or removes anything outside --output.

A CSV's ``case`` column becomes ``DIR/<case>``. Names that are not one plain path component fail
their own case in one line (the others go on); a folder of the same name that a run did not write
is never replaced; staging folders are recognised by their marker, not by their name. Each test
compares a checksum tree of the folder around the output before and after.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess

import numpy as np
import pytest
from test_batch import LABELS, LEVEL, _orientedPhantom, command

from conftest import treeDigest
from MedSegUNetLib import cli
from MedSegUNetLib.engine.modelcard import saveModel
from MedSegUNetLib.models import phantoms


@pytest.fixture
def a_table_world(tmp_path):
    """inputs/phantom/t2_tra.nrrd, a model, a decoy folder 'keep' beside the output, and the output path."""
    phantom = tmp_path / "inputs" / "phantom"
    phantom.mkdir(parents=True)
    _orientedPhantom(phantom, "t2_tra", phantoms.rotationMatrix((1, 1, 0), 10) @ np.eye(3))
    (tmp_path / "inputs" / "report.txt").write_text("the input folder's own file")
    card = phantoms.thresholdCard(LABELS, inputs=("T2",), patchSize=(96, 96, 16))
    saveModel(phantoms.thresholdModule((LEVEL,)), card, tmp_path / "model.pt")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "thesis.docx").write_text("four years of work")
    return {"root": tmp_path, "image": phantom / "t2_tra.nrrd", "model": str(tmp_path / "model.pt"), "out": tmp_path / "out"}


def writeTable(path, rows) -> str:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "T2"])
        writer.writerows(rows)
    return str(path)


def outsideOutput(world) -> dict:
    return {name: digest for name, digest in treeDigest(world["root"]).items() if not (name == "out" or name.startswith("out/"))}


UNSAFE = ["../escaped", "../keep", "..", ".", ".medsegunet-case-x", "site1/P001", "/etc", "a\nb", "x" * 200]


def test_unsafe_case_names_fail_alone_and_touch_nothing_outside_the_output(capsys, a_table_world):
    world = a_table_world
    rows = [[name, str(world["image"])] for name in UNSAFE]
    rows.append([str(world["image"].parent), str(world["image"])])  # the case's own input folder, absolute
    rows.append(["good", str(world["image"])])
    table = writeTable(world["root"] / "cases.csv", rows)
    before = outsideOutput(world)
    assert cli.main(["batch", "-q", "--model", world["model"], "--cases", table, "--output", str(world["out"]), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(UNSAFE) + 2 and err[-1].startswith(f"medsegunet: {len(UNSAFE) + 1} of {len(UNSAFE) + 2} cases failed"), err
    assert all("cannot be a folder name" in line for line in err[:-1]), err
    assert outsideOutput(world) == before
    assert sorted(os.listdir(world["out"])) == ["good", "qc.png", "summary.csv"]
    with open(world["out"] / "summary.csv", newline="", encoding="utf-8") as stream:
        statuses = {row["case"]: row["status"] for row in csv.DictReader(stream)}
    assert statuses["good"] == "ok" and list(statuses.values()).count("failed") == len(UNSAFE) + 1


def test_a_folder_the_run_did_not_write_is_never_replaced(capsys, a_table_world):
    world = a_table_world
    world["out"].mkdir()
    (world["out"] / "good").mkdir()
    (world["out"] / "good" / "notes.txt").write_text("the user's, not a run's")
    table = writeTable(world["root"] / "cases.csv", [["good", str(world["image"])]])
    before = treeDigest(world["root"])
    assert (
        cli.main(["batch", "-q", "--model", world["model"], "--cases", table, "--output", str(world["out"]), "--force", "--device", "cpu"])
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert "is not a case folder written by medsegunet batch" in err[0], err
    after = treeDigest(world["root"])
    assert {k: v for k, v in after.items() if k.startswith("out/good")} == {k: v for k, v in before.items() if k.startswith("out/good")}
    assert not [name for name in os.listdir(world["out"]) if name.startswith(".medsegunet")]


def test_an_output_inside_an_input_folder_is_refused_before_any_work(capsys, a_table_world, tmp_path_factory):
    from conftest import requireSharedData

    world = a_table_world
    series = tmp_path_factory.mktemp("dicom") / "t2 tra"
    series.mkdir()
    for path in sorted(requireSharedData("prostatex", "ProstateX-0000", "4-t2tsetra").iterdir()):
        os.symlink(path, series / path.name)
    table = writeTable(world["root"] / "cases.csv", [["good", str(series)]])
    inside = series / "out"
    before = treeDigest(world["root"])
    assert cli.main(["batch", "-q", "--model", world["model"], "--cases", table, "--output", str(inside), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lies inside the input given as a case's input" in err[0], err
    assert treeDigest(world["root"]) == before and not inside.exists()


def test_only_marked_staging_folders_are_swept(capsys, a_table_world):
    world = a_table_world
    out = world["out"]
    out.mkdir()
    stale = out / ".medsegunet-case-stale"  # left by a killed run: it has the marker
    stale.mkdir()
    (stale / ".medsegunet-staging").write_text("")
    (stale / "half.nrrd").write_text("partial")
    lookalike = out / ".medsegunet-case-mine"  # someone's folder, named alike
    lookalike.mkdir()
    (lookalike / "data.txt").write_text("keep me")
    table = writeTable(world["root"] / "cases.csv", [["good", str(world["image"])]])
    assert cli.main(["batch", "-q", "--model", world["model"], "--cases", table, "--output", str(out), "--device", "cpu"]) == 0
    assert not stale.exists()
    assert (lookalike / "data.txt").read_text() == "keep me"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_named_like_an_input_fails_its_case_without_hanging(a_table_world):
    world = a_table_world
    cases = world["root"] / "cohort"
    (cases / "pipe").mkdir(parents=True)
    os.mkfifo(cases / "pipe" / "t2_tra.nrrd")
    os.symlink(world["image"].parent, cases / "phantom")
    done = subprocess.run(
        [*command(), "batch", "-q", "--model", world["model"], "--cases", str(cases), "--output", str(world["out"]), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "case pipe failed" in lines[0], lines


def test_a_csv_saved_by_excel_with_a_byte_order_mark_is_read(capsys, a_table_world):
    world = a_table_world
    table = world["root"] / "cases.csv"
    table.write_bytes(b"\xef\xbb\xbfcase,T2\r\ngood," + str(world["image"]).encode("utf-8") + b"\r\n")
    assert (
        cli.main(["batch", "-q", "--model", world["model"], "--cases", str(table), "--output", str(world["out"]), "--device", "cpu"]) == 0
    ), capsys.readouterr().err
    assert (world["out"] / "good" / "manifest.json").is_file()


# [parameters: the file's bytes, expected: words of the one line]
TABLES = [
    ("cases.csv", "case,T2\nDüsseldorf,x.nrrd\n".encode("latin-1"), "is not UTF-8 text"),
    (
        "dataset.json",
        json.dumps({"test": ["a.nii.gz"], "name": "Prostata Düsseldorf"}, ensure_ascii=False).encode("latin-1"),
        "is not UTF-8 text",
    ),
    ("dataset.json", b"[1, 2, 3]", "its top level is a list"),
    ("dataset.json", b'{"test": [1, 2]}', "'test' is not a list of image paths"),
    ("dataset.json", b'{"training": "imagesTr"}', "'training' is not a list of image paths"),
    ("dataset.json", b'{"test": ["a.nii.gz"], "modality": ["T2"]}', "'modality' is not an object"),
    ("cases.csv", b"", "has no rows"),
]


@pytest.mark.parametrize("name, content, expected", TABLES, ids=[f"{name}-{expected[:20]}" for name, _, expected in TABLES])
def test_tables_people_have_are_one_line(capsys, a_table_world, name, content, expected):
    world = a_table_world
    (world["root"] / "source").mkdir()
    table = world["root"] / "source" / name
    table.write_bytes(content)
    assert (
        cli.main(["batch", "-q", "--model", world["model"], "--cases", str(table), "--output", str(world["out"]), "--device", "cpu"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error" not in err[0] and expected in err[0], err
    assert not world["out"].exists()


def test_a_volume_file_in_a_cohort_folder_is_a_case(capsys, a_table_world):
    world = a_table_world
    cohort = world["root"] / "cohort"
    (cohort / "folder-case").mkdir(parents=True)
    os.symlink(world["image"], cohort / "folder-case" / "t2_tra.nrrd")
    os.symlink(world["image"], cohort / "file-case.nrrd")
    (cohort / "notes.txt").write_text("not a volume: not a case")
    assert (
        cli.main(["batch", "-q", "--model", world["model"], "--cases", str(cohort), "--output", str(world["out"]), "--device", "cpu"]) == 0
    ), capsys.readouterr().err
    with open(world["out"] / "summary.csv", newline="", encoding="utf-8") as stream:
        assert {row["case"]: row["status"] for row in csv.DictReader(stream)} == {"file-case": "ok", "folder-case": "ok"}


def test_dry_run_shows_the_tables_roi_columns_and_checks_every_path(capsys, a_table_world):
    world = a_table_world
    image = str(world["image"])
    table = world["root"] / "cases.csv"
    table.write_text(f"case,T2,roi_sag,roi_cor\nfine,{image},{image},{image}\nmissing,{image},absent/sag.nrrd,{image}\n", encoding="utf-8")
    card = phantoms.thresholdCard(LABELS, inputs=("T2",), patchSize=(96, 96, 16))
    card["roi"] = {"from_series": ["t2 sag", "t2 cor"]}
    (world["root"] / "model.pt.json").write_text(json.dumps(card))
    assert cli.main(["batch", "--model", world["model"], "--cases", str(table), "--output", str(world["out"]), "--dry-run"]) == 1
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[0] == ["case", "T2", "ROI t2 sag", "ROI t2 cor", "status"]
    assert lines[1] == ["fine", image, image, image, "ok"]
    assert lines[2][0] == "missing" and lines[2][2] == str(world["root"] / "absent" / "sag.nrrd")
    assert lines[2][4].startswith("error: '") and "does not exist" in lines[2][4]
    assert not world["out"].exists()
