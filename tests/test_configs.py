"""Training recipes: strict `--set` parsing, range checks, JSON round trips, resume rules."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.configs import RECIPES, RESUMABLE_FIELDS, TrainConfig, get_recipe, resume_config

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
    ],
)
def test_booleans_are_parsed_strictly(text, value):
    assert get_recipe("tiny").override([f"precompile={text}"]).precompile is value


@pytest.mark.parametrize("text", ["ture", "", "2", "on?", "none"])
def test_a_misspelt_boolean_is_an_error_naming_the_field(text):
    with pytest.raises(ValueError, match=r"precompile: expected true or false, got") as e:
        get_recipe("tiny").override([f"precompile={text}"])
    assert repr(text) in str(e.value)


def test_integers_accept_integral_numbers_only():
    cfg = get_recipe("tiny")
    assert cfg.override(["steps=1e4"]).steps == 10000
    assert cfg.override(["steps=2000.0", "seed=+3"]).steps == 2000
    for bad in ("1.5", "ten", "1e400", "0x10", "nan", "", "9" * 5000):
        with pytest.raises(ValueError, match=r"steps: expected an integer.*got") as e:
            cfg.override([f"steps={bad}"])
        assert repr(bad) in str(e.value) or bad == "1e400" or len(bad) > 100


def test_floats_tuples_and_text():
    cfg = get_recipe("tiny").override(
        ["peak_lr=1e-3", "bucket_frames=64, 128,320", "init_from=runs/a b", "ctc_weight=1"]
    )
    assert cfg.peak_lr == 1e-3 and cfg.bucket_frames == (64, 128, 320)
    assert cfg.init_from == "runs/a b" and isinstance(cfg.ctc_weight, float)
    for a, msg in [
        ("peak_lr=inf", "peak_lr: expected a number, got 'inf'"),
        ("peak_lr=fast", "peak_lr: expected a number, got 'fast'"),
        ("bucket_frames=64,,128", "bucket_frames: expected comma-separated integers"),
        ("bucket_frames=64;128", "bucket_frames: expected comma-separated integers"),
    ]:
        with pytest.raises(ValueError, match=msg):
            cfg.override([a])


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("steps=0", r"steps: expected an integer in \[1, 2147483647\], got 0"),
        ("steps=3000000000", r"steps: expected an integer in \[1, 2147483647\]"),
        ("augment_prob=1.5", r"augment_prob: expected a number in \[0.0, 1.0\], got 1.5"),
        ("real_share=1", r"real_share: expected a number in \[0.0, 1.0\), got 1.0"),
        ("clip_norm=0", r"clip_norm: expected a number > 0.0, got 0.0"),
        ("peak_lr=-1e-3", r"peak_lr: expected a number >= 0.0, got -0.001"),
        ("spec_freq_width=81", r"spec_freq_width: expected an integer in \[0, 80\], got 81"),
        ("bucket_frames=128,64", r"bucket_frames: expected increasing lengths, got 128,64"),
        ("bucket_frames=0,64", r"bucket_frames: expected comma-separated integers in \[1, "),
        ("model=huge", r"model: expected one of \['large', 'small', 'tiny'\], got 'huge'"),
        ("data_workers=-1", r"data_workers: expected an integer in \[0, "),
        ("max_seconds=0", r"max_seconds: expected a number > 0.0, got 0.0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        get_recipe("small").override([assignment])


def test_every_problem_is_listed_at_once():
    with pytest.raises(ValueError) as e:
        TrainConfig(steps=0, augment_prob=2.0, model=3)
    for name in ("steps", "augment_prob", "model"):
        assert f"{name}: expected" in str(e.value)


def test_malformed_and_unknown_assignments():
    cfg = get_recipe("tiny")
    with pytest.raises(ValueError, match="expects key=value, got 'steps'"):
        cfg.override(["steps"])
    with pytest.raises(ValueError, match="unknown train config field 'stpes'"):
        cfg.override(["stpes=10"])
    assert cfg.override([" steps = 12 "]).steps == 12
    assert cfg.override([]) is cfg or cfg.override([]) == cfg


def test_recipes_round_trip_through_json():
    for name, cfg in RECIPES.items():
        d = json.loads(json.dumps(cfg.to_dict()))
        assert TrainConfig.from_dict(d) == cfg, name
        assert isinstance(TrainConfig.from_dict(d).bucket_frames, tuple)
    # config.json written before a field existed still loads, with the default
    d = get_recipe("tiny").to_dict()
    del d["real_phrases"]
    assert TrainConfig.from_dict(d).real_phrases == TrainConfig().real_phrases
    with pytest.raises(ValueError, match=r"unknown train config fields \['stpes'\]"):
        TrainConfig.from_dict({**d, "stpes": 3})
    with pytest.raises(ValueError, match="steps: expected an integer"):
        TrainConfig.from_dict({**d, "steps": "300"})  # a hand-edited config.json
    with pytest.raises(ValueError, match="precompile: expected true or false"):
        TrainConfig.from_dict({**d, "precompile": 1})


def _value_text():
    """Values written the way people write them, and nonsense."""
    return st.one_of(
        st.integers(-(2**40), 2**40).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["true", "False", "yes", "0", "1", "ture", "1e4", "1.5", "64,128"]),
        st.lists(st.integers(-5, 2000), max_size=4).map(lambda xs: ",".join(map(str, xs))),
        st.text(max_size=12),
    )


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), _value_text()),
        max_size=4,
    )
)
def test_fuzzed_assignments_give_a_valid_config_or_a_value_error(pairs):
    assignments = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = get_recipe("tiny").override(assignments)
    except ValueError as e:
        assert str(e)
        return
    # whatever was accepted was written in a form its field accepts ...
    for k, v in pairs:
        if isinstance(getattr(cfg, k.strip(), None), bool):
            assert v.strip().lower() in ("true", "false", "yes", "no", "1", "0"), (k, v)
        elif isinstance(getattr(cfg, k.strip(), None), int):
            assert float(v) == int(float(v)), (k, v)
    # ... and is a valid recipe that survives config.json
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for f in dataclasses.fields(cfg):
        assert isinstance(getattr(cfg, f.name), type(getattr(TrainConfig(), f.name)))


def test_help_lists_every_key_with_type_and_values():
    from train.configs import describe_fields

    text = describe_fields()
    for name in FIELDS:
        assert f"  {name} " in text, name
    assert "precompile        bool" in text
    assert "steps             int >= 1" in text and "300 / 4000 / 60000" in text


def test_resume_refuses_a_different_recipe_listing_each_field():
    saved = get_recipe("tiny")
    given = saved.replace(steps=500, peak_lr=1e-3, eval_every=7)
    with pytest.raises(ValueError) as e:
        resume_config(saved, given)
    msg = str(e.value)
    assert "steps: saved 300, given 500" in msg and "peak_lr: saved 0.002, given 0.001" in msg
    assert "eval_every" not in msg.split("Fields that may change")[0]
    with pytest.raises(ValueError, match="model: saved tiny, given small"):
        resume_config(saved, get_recipe("small"))


def test_resume_applies_and_reports_the_fields_that_may_change():
    saved = get_recipe("tiny")
    changed = {"eval_every": 7, "ckpt_every": 5, "precompile": True, "data_workers": 3}
    cfg, changes = resume_config(saved, saved.replace(**changed))
    assert cfg == saved.replace(**changed)
    assert changes == {k: [getattr(saved, k), v] for k, v in changed.items()}
    assert set(RESUMABLE_FIELDS) >= set(changed)
    assert resume_config(saved, saved) == (saved, {})


def test_resume_accepts_another_spelling_of_the_same_starting_model(tmp_path, monkeypatch):
    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = get_recipe("tiny").replace(init_from=str(tmp_path / "base"))
    cfg, changes = resume_config(saved, saved.replace(init_from="base"))
    assert cfg == saved and changes == {}
    cfg, _ = resume_config(saved, saved.replace(init_from="./base/"))
    with pytest.raises(ValueError, match="init_from: saved"):
        resume_config(saved, saved.replace(init_from="other"))
    with pytest.raises(ValueError, match="init_from: saved"):
        resume_config(saved, saved.replace(init_from=""))


def test_asr_train_help_lists_the_set_keys(capsys):
    from asr.cli import main

    try:
        code = main(["train", "--help"])
    except SystemExit as e:  # argparse's exit, where main does not catch it
        code = e.code
    out = capsys.readouterr().out
    assert code in (0, None) and "--skip-bad-rows" in out and "--set [KEY=VALUE ...]" in out
    assert "keys for --set KEY=VALUE" in out
    for name in FIELDS:
        assert f"\n  {name} " in out, name
