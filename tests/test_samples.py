"""samples/: only redistributable files, and the sheet script that shows shipped models on them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def load_sheets_module():  # noqa: ANN201 - a script module, loaded by path
    spec = importlib.util.spec_from_file_location("translation_sheets", SAMPLES / "translation_sheets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_translation_sheet_aligns_rows_and_columns() -> None:
    sheets = load_sheets_module()
    wide, tall = np.zeros((100, 200, 3), np.uint8), np.full((200, 100, 3), 255, np.uint8)
    img = sheets.sheet({"photo": [wide, tall], "model": [wide, tall]}, height=50)
    # Columns as wide as their widest cell (100 px for a 2:1 photo at 50 px), 4 px gaps, a caption strip.
    assert img.size == (4 + 100 + 4 + 100 + 4, sheets.LABEL + 2 * (50 + 4) + 4)
    assert img.getpixel((4 + 10, sheets.LABEL + 4 + 54 + 10)) == (255, 255, 255)  # the tall white photo, row 2
    assert img.getpixel((4 + 10, sheets.LABEL + 4 + 10)) == (0, 0, 0)  # the wide black one, row 1


def test_every_sample_file_is_listed_with_its_licence() -> None:
    readme = (SAMPLES / "README.md").read_text()
    for folder in ("photos", "textures"):
        for path in sorted((SAMPLES / folder).iterdir()):
            assert f"{folder}/{path.name}" in readme, path
