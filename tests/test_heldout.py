"""Held-out figures while training: eval.jsonl every eval_every steps, eval.json at the end, same numbers
as `imgtrans eval translate`, and no effect on what the run trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY, make_domain
from test_cut import TINY_CUT
from imgtrans.cli import run_cli
from imgtrans.eval import metrics
from imgtrans.eval.images import load_set
from imgtrans.eval.judge import load_judge
from imgtrans.eval.translate import evaluate_translation
from imgtrans.train.checkpoint import latest_checkpoint, load_checkpoint
from imgtrans.train.launch import RunRequest, run
from imgtrans.train.records import flatten_figures

JUDGE = "judge-horse2zebra"  # shipped in weights/: offline, 1.5 MB


def request(a: Path, b: Path, out: Path, objective: str = "cyclegan", **values: Any) -> RunRequest:
    merged = {**TINY, "model.a": str(a), "model.b": str(b), "train.steps": 4, **values}
    return RunRequest(objective=objective, values=merged, out=str(out), quiet=True)


@pytest.fixture
def tests_ab(tmp_path: Path) -> tuple[Path, Path]:
    return (make_domain(tmp_path / "testA", 3, "stripes", seed=5),
            make_domain(tmp_path / "testB", 4, "blobs", seed=6))


def held_out(tests_ab: tuple[Path, Path], fid: bool) -> dict[str, Any]:
    ta, tb = tests_ab
    return {"model.test_a": str(ta), "model.test_b": str(tb), "model.test_judge": JUDGE, "model.test_fid": fid}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_scores_itself_as_eval_translate_does(domains: tuple[Path, Path], tests_ab: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    fid = metrics.available() is None  # CI installs the Inception weights; elsewhere the judge alone
    run_dir = run(request(*domains, tmp_path / "runs", **{"train.eval_every": 2}, **held_out(tests_ab, fid)))
    assert run_dir is not None
    evals = lines(run_dir / "eval.jsonl")
    assert [e["step"] for e in evals] == [2, 4]
    final = json.loads((run_dir / "eval.json").read_text())
    assert flatten_figures(final) == {k: v for k, v in evals[-1].items() if k != "step"}
    # The same figures `imgtrans eval translate` gives for the run's final export (all test images).
    report = evaluate_translation(run_dir, *tests_ab, judge=JUDGE, device="cpu", fid=fid, size="train")
    ta, _ = tests_ab
    judge = load_judge(JUDGE)
    for d in ("AtoB", "BtoA"):
        systems = report["directions"][d]["systems"]
        for system, row in (("model", final[d]), ("identity", final[d]["identity"])):
            assert row["judge_target_share"] == pytest.approx(systems[system]["judge_target_share"], abs=1e-9)
            if fid:
                assert row["fid"] == pytest.approx(systems[system]["fid"], rel=1e-6)
                assert row["kid"] == pytest.approx(systems[system]["kid"], rel=1e-6, abs=1e-9)
        # The identity baseline is prepared once: the same at every evaluation.
        assert all(evals[0][k] == evals[1][k] for k in evals[0] if "/identity/" in k)
    # Identity, counted independently: the judge's verdict on the unchanged test A images.
    p_b = judge.judge(load_set(ta, "A")).p_b
    assert final["AtoB"]["identity"]["judge_target_share"] == pytest.approx(float((p_b > 0.5).mean()))
    if fid:
        assert evals[0]["AtoB/kid"] != evals[1]["AtoB/kid"]  # the generators trained in between
        assert np.isfinite(final["BtoA"]["fid"]) and "fid_skipped" not in final
    else:
        assert final["AtoB"]["fid"] is None and final["fid_skipped"]


def test_evaluating_does_not_change_what_the_run_trains(domains: tuple[Path, Path], tests_ab: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    plain = run(request(*domains, tmp_path / "plain"))
    scored = run(request(*domains, tmp_path / "scored", **{"train.eval_every": 1}, **held_out(tests_ab, False)))
    assert plain is not None and scored is not None
    assert not (plain / "eval.json").exists() and not (plain / "eval.jsonl").exists()
    assert [e["step"] for e in lines(scored / "eval.jsonl")] == [1, 2, 3, 4]
    x, y = (load_checkpoint(latest_checkpoint(r))["nets"] for r in (plain, scored))
    assert all(torch.equal(x[n][k], y[n][k]) for n in x for k in x[n])  # bit for bit


def test_cut_cli_run_scores_its_one_direction_and_says_so(domains: tuple[Path, Path], tests_ab: tuple[Path, Path],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = domains
    sets = [x for k, v in TINY_CUT.items() for x in ("--set", f"{k}={v}")]
    code = run_cli(["train", "cut", "--a", str(a), "--b", str(b), "--test-a", str(tests_ab[0]),
                    "--test-b", str(tests_ab[1]), "--out", str(tmp_path / "runs"), "--steps", "4", *sets,
                    "--set", f"test_judge={JUDGE}", "--set", "test_fid=false"])
    err = capsys.readouterr().err
    assert code == 0, err
    run_dir = next((tmp_path / "runs").iterdir())
    final = json.loads((run_dir / "eval.json").read_text())
    assert set(final) == {"AtoB", "fid_skipped"} and 0.0 <= final["AtoB"]["judge_target_share"] <= 1.0
    share = final["AtoB"]["identity"]["judge_target_share"]
    assert f"evaluation at step 4: AtoB judge {final['AtoB']['judge_target_share']:.0%} (identity judge {share:.0%})" \
        in err
    config = json.loads((run_dir / "config.json").read_text())["model"]
    assert config["test_a"] == str(tests_ab[0]) and config["test_judge"] == JUDGE  # resume scores the same way


@pytest.mark.parametrize("case", ["only_a", "missing"])
def test_bad_test_folders_fail_before_training(case: str, domains: tuple[Path, Path], tests_ab: tuple[Path, Path],
                                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = domains
    args = {"only_a": ["--test-a", str(tests_ab[0])],
            "missing": ["--test-a", str(tests_ab[0]), "--test-b", str(tmp_path / "nope")]}[case]
    code = run_cli(["train", "cyclegan", "--a", str(a), "--b", str(b), *args, "--out", str(tmp_path / "runs"),
                    "--steps", "2", "-q"])
    err = capsys.readouterr().err
    expected = {"only_a": "pass --test-a and --test-b", "missing": "nope: folder not found"}[case]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and expected in errors[0], err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
