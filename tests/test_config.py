"""Config sections: coercion, --set parsing, merge/layering, JSON files and the round trip."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtrans.config import coerce, load_file, merge, parse_sets, to_dict
from imgtrans.errors import UserError
from imgtrans.objectives.cyclegan import CycleGANConfig
from imgtrans.train.trainer import TrainConfig


def real_sections() -> dict:
    return {"train": TrainConfig(), "model": CycleGANConfig()}


@dataclass(frozen=True)
class Alpha:
    depth: int = 1
    only_alpha: str = "a"


@dataclass(frozen=True)
class Beta:
    depth: int = 2
    ratio: float = 0.5


@dataclass(frozen=True)
class Shapes:
    pair: tuple[int, int] = (1, 2)
    many: tuple[float, ...] = ()
    maybe: int | None = None
    label: str = "x"


# --------------------------------------------------------------------------- coerce


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("True", True), ("TRUE", True), ("on", True), ("yes", True), ("1", True), (" on ", True),
    ("false", False), ("False", False), ("off", False), ("OFF", False), ("no", False), ("0", False),
    (True, True), (False, False), (1, True), (0, False),
])
def test_coerce_bool(text, expected) -> None:
    got = coerce(text, bool, "flag")
    assert got is expected


@pytest.mark.parametrize("bad", ["maybe", "2", "", "yess", 2])
def test_coerce_bool_rejects(bad) -> None:
    with pytest.raises(UserError, match="flag"):
        coerce(bad, bool, "flag")


@pytest.mark.parametrize("text, expected", [("8", 8), ("-3", -3), (" 12 ", 12), (7, 7), (8.0, 8), ("1e3", 1000),
                                            ("2E2", 200), ("2.5e3", 2500)])
def test_coerce_int(text, expected) -> None:
    got = coerce(text, int, "n")
    assert got == expected and type(got) is int


@pytest.mark.parametrize("bad", ["eight", "1.5", 2.5, "", None, "1,2"])
def test_coerce_int_rejects(bad) -> None:
    with pytest.raises(UserError, match="n") as ei:
        coerce(bad, int, "n")
    assert "int" in str(ei.value)


@pytest.mark.parametrize("bad", ["1e-4", "1.5e0", "2.5e-1"])
def test_coerce_int_rejects_non_integral_exponent_strings(bad) -> None:
    # '1e3' is accepted as 1000, but an exponent form that is not a whole number must not be
    # silently truncated (--set batch_size=1e-4 would become 0).
    with pytest.raises(UserError, match="n"):
        coerce(bad, int, "n")


@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("2E-4", 2e-4), ("0.5", 0.5), ("3", 3.0), (7, 7.0),
                                            (" 1.25 ", 1.25), ("-2.5e1", -25.0)])
def test_coerce_float(text, expected) -> None:
    got = coerce(text, float, "lr")
    assert got == pytest.approx(expected, rel=1e-12) and type(got) is float


@pytest.mark.parametrize("bad", ["fast", "", "1e-4x", None])
def test_coerce_float_rejects(bad) -> None:
    with pytest.raises(UserError, match="lr"):
        coerce(bad, float, "lr")


def test_coerce_str() -> None:
    assert coerce("bf16", str, "amp") == "bf16"
    assert coerce(5, str, "name") == "5"
    assert coerce("", str, "name") == ""


def test_coerce_tuple_and_optional() -> None:
    hints = typing.get_type_hints(Shapes)
    assert coerce("3,4", hints["pair"], "pair") == (3, 4)
    assert coerce([5, 6], hints["pair"], "pair") == (5, 6)
    assert coerce("0.5,1e-3,2", hints["many"], "many") == (0.5, 1e-3, 2.0)
    assert coerce([1, 2, 3, 4], hints["many"], "many") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(UserError, match="pair") as ei:
        coerce("1,2,3", hints["pair"], "pair")
    assert "2" in str(ei.value)
    with pytest.raises(UserError, match="pair"):
        coerce("1,x", hints["pair"], "pair")
    assert coerce("none", hints["maybe"], "maybe") is None
    assert coerce(None, hints["maybe"], "maybe") is None
    assert coerce("null", hints["maybe"], "maybe") is None
    assert coerce("4", hints["maybe"], "maybe") == 4
    with pytest.raises(UserError, match="maybe"):
        coerce("four", hints["maybe"], "maybe")


# --------------------------------------------------------------------------- parse_sets


def test_parse_sets() -> None:
    got = parse_sets(["crop_size=128", " model.ngf = 8 ", "name=a=b", "amp=", "lr=1e-4", "crop_size=64"])
    assert got == {"crop_size": "64", "model.ngf": "8", "name": "a=b", "amp": "", "lr": "1e-4"}
    assert parse_sets([]) == {}


@pytest.mark.parametrize("bad", ["novalue", "=5", " =5", ""])
def test_parse_sets_rejects(bad) -> None:
    with pytest.raises(UserError, match="key=value") as ei:
        parse_sets(["ok=1", bad])
    assert repr(bad) in str(ei.value)


# --------------------------------------------------------------------------- merge


def test_merge_flat_and_dotted_keys() -> None:
    base = real_sections()
    out = merge(base, {"crop_size": "128", "model.ngf": "8", "seed": "3", "train.amp": "bf16"})
    assert out["model"].crop_size == 128 and out["model"].ngf == 8
    assert out["train"].seed == 3 and out["train"].amp == "bf16"
    # Untouched fields keep their defaults, and the inputs are not modified.
    assert out["model"].ndf == CycleGANConfig().ndf and out["train"].epochs == TrainConfig().epochs
    assert base["model"] == CycleGANConfig() and base["train"] == TrainConfig()
    assert isinstance(out["model"], CycleGANConfig) and isinstance(out["train"], TrainConfig)


def test_merge_coerces_each_type() -> None:
    out = merge(real_sections(), {"lr": "1e-4", "deterministic": "on", "flip": "off", "dropout": "true",
                                  "epochs": "3", "batch_size": "4", "name": "run1", "train.grad_clip": "2.5"})
    m, t = out["model"], out["train"]
    assert m.lr == pytest.approx(1e-4) and type(m.lr) is float
    assert t.deterministic is True and m.flip is False and m.dropout is True
    assert t.epochs == 3.0 and type(t.epochs) is float
    assert t.batch_size == 4 and type(t.batch_size) is int
    assert t.name == "run1" and t.grad_clip == 2.5


def test_merge_empty_is_identity() -> None:
    assert merge(real_sections(), {}) == real_sections()


def test_merge_unknown_key_lists_known_settings() -> None:
    with pytest.raises(UserError) as ei:
        merge(real_sections(), {"crop_sizee": "3"})
    msg = str(ei.value)
    assert "crop_sizee" in msg and "unknown" in msg
    for known in ("crop_size", "ngf", "batch_size", "lr", "seed"):
        assert known in msg


@pytest.mark.parametrize("key", ["model.nope", "nosection.ngf", "train.ngf", "model."])
def test_merge_unknown_dotted_key(key) -> None:
    with pytest.raises(UserError, match="unknown setting") as ei:
        merge(real_sections(), {key: "1"})
    assert repr(key) in str(ei.value)


@pytest.mark.parametrize("key, value", [("crop_size", "big"), ("model.ngf", "8.5"), ("lr", "fast"),
                                        ("deterministic", "perhaps"), ("train.batch_size", "")])
def test_merge_bad_value_names_key(key, value) -> None:
    with pytest.raises(UserError) as ei:
        merge(real_sections(), {key: value})
    assert key in str(ei.value)


def test_merge_ambiguous_key() -> None:
    sections = {"alpha": Alpha(), "beta": Beta()}
    with pytest.raises(UserError, match="ambiguous") as ei:
        merge(sections, {"depth": "5"})
    msg = str(ei.value)
    assert "alpha.depth" in msg and "beta.depth" in msg
    out = merge(sections, {"alpha.depth": "5", "ratio": "0.25", "only_alpha": "z"})
    assert out == {"alpha": Alpha(depth=5, only_alpha="z"), "beta": Beta(depth=2, ratio=0.25)}
    out = merge(sections, {"beta": {"depth": 9}})
    assert out["beta"].depth == 9 and out["alpha"].depth == 1


def test_merge_nested_section_dicts() -> None:
    file_like = {"model": {"ngf": 8, "lr": 0.001, "flip": False}, "train": {"batch_size": 2, "amp": "bf16"}}
    out = merge(real_sections(), file_like)
    assert out["model"].ngf == 8 and out["model"].lr == 0.001 and out["model"].flip is False
    assert out["train"].batch_size == 2 and out["train"].amp == "bf16"
    with pytest.raises(UserError, match="model.bogus"):
        merge(real_sections(), {"model": {"bogus": 1}})
    with pytest.raises(UserError, match="model.ngf"):
        merge(real_sections(), {"model": {"ngf": "many"}})


def test_merge_tuple_fields() -> None:
    out = merge({"s": Shapes()}, {"pair": "7,8", "many": [1, 2], "maybe": "3"})
    assert out["s"] == Shapes(pair=(7, 8), many=(1.0, 2.0), maybe=3)
    assert isinstance(out["s"].pair, tuple)


def test_layering_later_merge_wins() -> None:
    defaults = real_sections()
    from_file = merge(defaults, {"model": {"ngf": 16, "crop_size": 64}, "train": {"seed": 1}})
    from_sets = merge(from_file, parse_sets(["model.ngf=8", "seed=2"]))
    assert from_sets["model"].ngf == 8  # --set beats the file
    assert from_sets["train"].seed == 2
    assert from_sets["model"].crop_size == 64  # file beats the defaults where --set is silent
    assert from_sets["model"].ndf == CycleGANConfig().ndf
    # Within one mapping the later key wins too.
    assert merge(defaults, {"model": {"ngf": 4}, "model.ngf": 12})["model"].ngf == 12


# --------------------------------------------------------------------------- to_dict / JSON


def test_to_dict_shape() -> None:
    d = to_dict(real_sections())
    assert set(d) == {"train", "model"}
    assert d["model"]["ngf"] == 64 and d["train"]["batch_size"] == 1
    assert set(d["model"]) == {f.name for f in dataclasses.fields(CycleGANConfig)}
    json.dumps(d)  # JSON-ready


def test_json_round_trip(tmp_path: Path) -> None:
    changed = merge(real_sections(), {"lr": "1e-4", "crop_size": "64", "name": "run-x", "deterministic": "on",
                                      "epochs": "2.5", "flip": "off", "a": "/data/A", "amp": "bf16"})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(changed), indent=2))
    restored = merge(real_sections(), load_file(path))
    assert restored == changed
    assert restored != real_sections()
    # Also without going through a file, and for tuple fields.
    shapes = {"s": Shapes(pair=(3, 4), many=(0.5,), maybe=2)}
    assert merge({"s": Shapes()}, json.loads(json.dumps(to_dict(shapes)))) == shapes


# --------------------------------------------------------------------------- load_file


def test_load_file_ok(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"model": {"ngf": 8}, "seed": 1}')
    assert load_file(p) == {"model": {"ngf": 8}, "seed": 1}
    assert load_file(str(p)) == {"model": {"ngf": 8}, "seed": 1}


def test_load_file_missing(tmp_path: Path) -> None:
    p = tmp_path / "nope.json"
    with pytest.raises(UserError, match="not found") as ei:
        load_file(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("text", ['{"model": ', "not json", "", "{'single': 'quotes'}"])
def test_load_file_invalid_json(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(UserError) as ei:
        load_file(p)
    assert str(p) in str(ei.value) and "JSON" in str(ei.value)


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"text"', "null"])
def test_load_file_non_object(tmp_path: Path, text: str) -> None:
    p = tmp_path / "list.json"
    p.write_text(text)
    with pytest.raises(UserError, match="JSON object") as ei:
        load_file(p)
    assert str(p) in str(ei.value)


def test_load_file_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError) as ei:
        load_file(tmp_path)
    assert str(tmp_path) in str(ei.value)


def test_load_file_binary_is_user_error(tmp_path: Path) -> None:
    # e.g. an image passed as --config by mistake: must be a one-line UserError, not a traceback.
    p = tmp_path / "oops.json"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    with pytest.raises(UserError) as ei:
        load_file(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("key,value,allowed", [
    ("ngf", "0", "at least 1"), ("model.n_blocks", "-1", "at least 0"), ("lr", "0", "above 0"),
    ("beta2", "1", "at least 0 and below 1"), ("decay_start", "1.5", "between 0 and 1"), ("lambda_cycle", "-2", "at least 0"),
    ("crop_size", "4", "at least 8"), ("batch_size", "0", "at least 1"),
])
def test_merge_refuses_values_out_of_range(key: str, value: str, allowed: str) -> None:
    sections = {"train": TrainConfig(), "model": CycleGANConfig()}
    with pytest.raises(UserError, match=f"^{key}={value}: must be {allowed}"):
        merge(sections, {key: value})
    with pytest.raises(UserError, match="must be"):  # config files pass through the same check
        merge(sections, {key.split(".")[-1]: float(value)})


def test_merge_accepts_range_edges() -> None:
    edges = {"n_blocks": "0", "pool_size": "0", "decay_start": "1", "beta1": "0", "lambda_identity": "0",
             "crop_size": "8", "lr": "1e-9", "keep_checkpoints": "0"}
    merged = merge({"train": TrainConfig(), "model": CycleGANConfig()}, edges)
    assert merged["model"].n_blocks == 0 and merged["train"].decay_start == 1.0 and merged["model"].lr == 1e-9
