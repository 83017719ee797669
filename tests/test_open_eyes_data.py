"""End to end on the real data: train both eye models briefly, then open-eyes on closed-eye photos."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import data_root
from imgtrans.cli import run_cli
from imgtrans.data.faces import held_out

pytestmark = [pytest.mark.data, pytest.mark.slow]


def small_index(faces: Path, path: Path) -> Path:
    """6 LFW photos of 3 training identities (open eyes) and 6 UTK faces with the lowest scores."""
    with (faces / "lfw_pairs" / "index.csv").open() as f:
        lfw = list(csv.DictReader(f))
    chosen, per_id = [], {}
    for row in lfw:
        ident = row["identity"]
        if held_out(ident) or per_id.get(ident, 0) >= 2 or (len(per_id) >= 3 and ident not in per_id):
            continue
        per_id[ident] = per_id.get(ident, 0) + 1
        chosen.append({"file": f"lfw_pairs/{row['file']}", "identity": ident,
                       "open_left": row["open_left"], "open_right": row["open_right"]})
    with (faces / "utkface" / "index.csv").open() as f:
        utk = sorted(csv.DictReader(f), key=lambda r: float(r["open_score"]))[:6]
    chosen += [{"file": f"utkface/{r['file']}", "identity": "", "open_left": r["open_left"],
                "open_right": r["open_right"]} for r in utk]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "identity", "open_left", "open_right"])
        w.writeheader()
        w.writerows(chosen)
    return path


def test_train_both_then_open_eyes_on_closed_eye_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("IMGTRANS_HOME", str(tmp_path / "home"))  # fresh landmark cache, no leftovers
    faces = data_root() / "faces"
    index = small_index(faces, tmp_path / "index.csv")
    common = ["--faces", str(faces), "--index", str(index), "-q", "--set", "workers=0", "--set", "batch_size=4"]
    assert run_cli(["train", "eyestate", *common, "--out", str(tmp_path / "runs"), "--steps", "4",
                    "--set", "width=8"]) == 0, capsys.readouterr().err
    assert run_cli(["train", "eyes", *common, "--out", str(tmp_path / "runs"), "--steps", "2",
                    "--set", "ngf=8", "--set", "n_blocks=1", "--set", "ndf=8", "--set", "local_ndf=8",
                    "--set", "size=64"]) == 0, capsys.readouterr().err
    runs = {p.name.split("-", 1)[1]: p for p in (tmp_path / "runs").iterdir()}
    assert (runs["eyestate"] / "export" / "eyestate.safetensors").exists()
    assert (runs["eyes"] / "export" / "inpainter.safetensors").exists()

    src = tmp_path / "closed"
    src.mkdir()
    for p in sorted((faces / "closed_eyes").glob("*.jpg"))[:5]:
        shutil.copy(p, src / p.name)  # a temporary working copy for the run, never committed
    code = run_cli(["open-eyes", str(src), str(tmp_path / "out"), "--weights", str(runs["eyes"]),
                    "--classifier", str(runs["eyestate"]), "--all", "--report", str(tmp_path / "r.json"),
                    "--format", "png", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())["photos"]
    assert len(report) == 5 and sum(p["faces"] for p in report.values()) >= 5
    assert all(p["fixed"] == p["faces"] for p in report.values())  # --all
    for name in (p.name for p in src.iterdir()):
        before = np.asarray(Image.open(src / name).convert("RGB"))
        after = np.asarray(Image.open(tmp_path / "out" / f"{Path(name).stem}.png"))
        changed = (before != after).any(-1)
        assert after.shape == before.shape and 0 < changed.mean() < 0.1  # only the eye regions changed
    # The eyes evaluation runs end to end with these tiny models too (held-out faces + closed_eyes/).
    code = run_cli(["eval", "eyes", "-m", str(runs["eyes"]), "--faces", str(faces), "--max-faces", "3",
                    "--classifier", str(runs["eyestate"]), "--json", str(tmp_path / "eval.json")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {"model", "flat", "telea", "exemplar_paste"} <= set(result["systems"])
    assert result["closed_eyes"]
