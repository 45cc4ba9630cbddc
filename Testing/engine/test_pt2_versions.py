"""``.pt2`` files written by the oldest and the newest torch that MedSegUNet supports for them
(2.9.1 and 2.14.1, ``Testing/data/pt2-versions``) load with this torch through every check and
answer exactly as the writer's network did; the reverse direction (those torches reading this
one's files) is ``Testing/benchmarks/compat_torch.py``'s, run by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "pt2-versions"
WRITERS = ["2.9.1+cu128", "2.14.1+cu130"]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_pt2_written_by_another_torch_loads_and_answers_as_its_writer(writer):
    import torch

    from MedSegUNetLib.engine.exportedmodel import exampleInput
    from MedSegUNetLib.engine.modelcard import clearModelCache, loadModel, readCard

    path = FIXTURES / f"written-{writer}.pt2"
    card = readCard(path)
    assert card["name"] == f"written by torch {writer}" and card["patch_size"] == [16, 16, 8]
    clearModelCache()
    loaded = loadModel(str(path), "cpu")
    with torch.no_grad():
        answer = loaded.network(exampleInput(loaded.card)).numpy()
    expected = np.load(FIXTURES / f"answer-{writer}.npy")
    assert answer.shape == expected.shape == (1, 2, 16, 16, 8)
    assert float(np.abs(answer - expected).max()) <= 1e-6


@pytest.mark.parametrize("writer", WRITERS)
def test_info_names_the_torch_that_wrote_it(capsys, writer):
    from MedSegUNetLib import cli

    assert cli.main(["info", str(FIXTURES / f"written-{writer}.pt2")]) == 0
    assert f"Format: torch.export (.pt2), written with torch {writer}" in capsys.readouterr().out
