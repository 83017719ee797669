"""The benchmark scripts run end to end (--quick) and print their tables; case isolation measures peak RSS."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, run_case  # noqa: E402

CHILD = '''
import sys
sys.path.insert(0, {root!r})
from benchmarks.common import report
import numpy as np
big = np.ones(({mb} * 2**20) // 8)  # touched, so resident
report({{"sum": float(big[:10].sum()), "case": sys.argv[sys.argv.index("--case") + 1]}})
'''


def test_each_case_reports_its_own_peak_rss(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=str(ROOT), mb=300))
    big = run_case(script, "big", tmp_path)
    script.write_text(CHILD.format(root=str(ROOT), mb=1))
    small = run_case(script, "small", tmp_path)  # a fresh process: the earlier peak is not inherited
    assert big.values == {"sum": 10.0, "case": "big"}
    assert big.max_rss_mb > 300 > small.max_rss_mb


def test_tables_are_markdown_with_aligned_columns(capsys: pytest.CaptureFixture[str]) -> None:
    text = print_table("t", ["name", "value"], [["a", 1.234], ["bb", None]])
    lines = text.splitlines()
    assert lines[0] == "### t" and lines[2].startswith("| name") and lines[3].startswith("|---")
    assert lines[4] == "| a    | 1.23  |" and lines[5] == "| bb   | -     |"
    assert capsys.readouterr().out.strip() == text.strip()


def quick(script: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], capture_output=True,
                          text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_translate_quick_prints_every_table() -> None:
    out = quick("translate.py")
    for row in ("naive (reference test loop)", "imgtrans (torch, precision auto", "inference_mode", "bf16 autocast",
                "batch of 4", "imgtrans Translator (shipped path)", "% of peak", "automatic tiles (shipped)",
                "untrained ResNet-9 ngf16, bf16 autocast", "min PSNR dB", "sub-pixel upsampling (exact)"):
        assert row in out
    if importlib.util.find_spec("onnxruntime") is None:  # the onnx extra adds the backend rows
        assert out.count("| 4 x 128x128") == 2 and out.count("| 2 x 640x384") == 2  # naive and torch rows
        return
    for row in ("(onnxruntime fp32)", "(onnxruntime int8, export --format onnx-int8)", "onnxruntime int8 (",
                "untrained ResNet-9 ngf16, int8 ONNX", "int8 mean PSNR against fp32"):
        assert row in out
    assert out.count("| 4 x 128x128") == 4 and out.count("| 2 x 640x384") == 4  # naive, torch, onnx, int8


@pytest.mark.slow
def test_train_quick_prints_naive_and_imgtrans_steps() -> None:
    out = quick("train.py")
    for row in ("naive reference step", "imgtrans Trainer as shipped (fp32, Adam fused", "halves one after the other",
                "masked generators (--set mask=true", "steps/s",
                ">= 1.5x naive", "Adam update alone", "| loop ", "| foreach ", "| fused "):
        assert row in out


@pytest.mark.slow
def test_eyes_quick_finds_the_pasted_faces_and_times_each_stage() -> None:
    out = quick("eyes.py")
    assert "1 face (1 found)" in out and "5 faces (5 found)" in out
    for header in ("decode", "detect", "eye-state", "in-paint", "blend", "encode", "max RSS MB"):
        assert header in out
    assert "models: MTCNN" in out
