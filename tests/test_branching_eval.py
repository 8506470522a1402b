"""The encoder's cost in `asr eval` (MACs per second of audio, a branching encoder's share of
expensive frames) and `asr plot branches`, on tiny random models.

The arbiter is forced (output kernel 0, bias +-100) to send every frame the expensive or the
cheap way, so the share is known; the MACs are checked against `encode_aux` run on each
utterance alone (no batch, no padding) and, for the all-cheap model, against the closed form
`frame_macs` gives (cheap frames attend nothing expensive: a constant per frame).
"""

from __future__ import annotations

import functools
import json
import math

import jax
import numpy as np
import pytest
import soundfile as sf
from conftest import random_variables

from asr.audio import SAMPLE_RATE
from asr.cli import main
from asr.features import log_mel
from asr.model_io import LoadedModel, save_model_folder
from asr.models import build_model, get_config
from asr.models.macs import frame_macs
from asr.plot import branch_map, plot_branches
from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
from asr.tokenizer import Tokenizer

SR = SAMPLE_RATE
SECONDS = (0.5, 1.1, 0.25)  # different lengths: the shorter ones are padded in their batch


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["turn on the lights", "call mom", "stop", "go"] * 20, vocab_size=24)


def _speechy(seconds: float, seed: int) -> np.ndarray:
    """f32[N]: noise bursts shaped like syllables, a pause every other 1/3 s."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    env = 0.3 * (1.2 + np.sin(2 * np.pi * 3.0 * np.arange(n) / SR + rng.uniform(0, 6)))
    env *= (np.arange(n) // (SR // 3)) % 2
    return (env * rng.standard_normal(n) + 1e-3 * rng.standard_normal(n)).astype(np.float32)


def _loaded(tok, encoder: str = "branching", force: float | None = None) -> LoadedModel:
    """A tiny random model; `force` +100 / -100 makes the arbiter choose expensive / cheap;
    without, its logits are shifted by +5, which sends most frames of `_speechy`'s bursts the
    expensive way and its pauses the cheap way (the random arbiter gives about 0 and -11)."""
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size, encoder=encoder, num_layers=1)
    model = build_model(cfg)
    variables = jax.tree_util.tree_map(np.asarray, random_variables(model, seed=3))
    if encoder == "branching":
        out = variables["params"]["encoder"]["arbiter"]["out"]
        if force is None:
            out["bias"] = out["bias"] + 5.0
        else:
            out["kernel"] = np.zeros_like(out["kernel"])
            out["bias"] = np.full_like(out["bias"], force)
    return LoadedModel(model, variables, tok, cfg, f"{encoder}-{force}")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    paths = []
    for i, s in enumerate(SECONDS):
        p = d / f"{i}.wav"
        sf.write(p, _speechy(s, seed=i), SR)
        paths.append(p)
    return paths


def _rows(wavs) -> list[dict]:
    spk = ["ann", "bob", "ann"]
    return [{"audio": str(p), "text": "go", "speaker": s} for p, s in zip(wavs, spk, strict=True)]


@functools.cache
def _encode_aux(model):
    return jax.jit(functools.partial(model.apply, method="encode_aux"))


def _direct(loaded: LoadedModel, path) -> tuple[float, float, int, float]:
    """(MACs, expensive frames, encoder frames, audio seconds) of one file, encoded alone as the
    recognizer would (tail silence appended), without batching or padding."""
    x, _ = sf.read(path, dtype="float32")
    tail = np.zeros(round(DecodeSettings().tail_padding_seconds * SR), np.float32)
    feats = log_mel(np.concatenate([x, tail]))
    _, pads, aux = _encode_aux(loaded.model)(
        loaded.variables, feats[None], np.zeros((1, len(feats)), np.float32)
    )
    assert not np.any(np.asarray(pads))
    e = float(np.sum(np.asarray(aux["expensive"]))) if "expensive" in aux else math.nan
    macs = float(np.sum(np.asarray(aux["macs"]), dtype=np.float64))
    return macs, e, pads.shape[1], len(x) / SR


def _evaluate(loaded, wavs, **kw):
    rec = Recognizer(loaded, DecodeSettings(method="greedy", batch_size=2))
    return evaluate_manifest(rec, _rows(wavs), details=True, **kw)


@pytest.mark.parametrize("force, share", [(100.0, 1.0), (-100.0, 0.0)])
def test_eval_reports_forced_share_and_macs(tok, wavs, force, share):
    loaded = _loaded(tok, force=force)
    res = _evaluate(loaded, wavs, by=("speaker",))
    direct = [_direct(loaded, p) for p in wavs]
    assert res["expensive_frame_share"] == share
    macs = sum(d[0] for d in direct)
    seconds = sum(d[3] for d in direct)
    assert res["audio_seconds"] == pytest.approx(seconds)
    assert res["encoder_macs_per_second"] == pytest.approx(macs / seconds, rel=1e-5)
    for row, d in zip(res["utterances_detail"], direct, strict=True):
        assert row["expensive_frame_share"] == share
        assert row["encoder_macs_per_second"] == pytest.approx(d[0] / d[3], rel=1e-5)
    if share == 0.0:  # every frame costs the same: the count is frames x constant
        m = frame_macs(loaded.config)
        per_frame = m["shared"] + m["arbiter"] + m["cheap"]
        frames = sum(d[2] for d in direct)
        assert res["encoder_macs_per_second"] == pytest.approx(
            frames * per_frame / seconds, rel=1e-5
        )
    # the speaker groups: their rows' sums
    ann = [direct[0], direct[2]]
    g = res["by"]["speaker"]["ann"]
    assert g["encoder_macs_per_second"] == pytest.approx(
        sum(d[0] for d in ann) / sum(d[3] for d in ann), rel=1e-5
    )
    assert g["expensive_frame_share"] == share


def test_expensive_costs_more_than_cheap(tok, wavs):
    hi = _evaluate(_loaded(tok, force=100.0), wavs)["encoder_macs_per_second"]
    lo = _evaluate(_loaded(tok, force=-100.0), wavs)["encoder_macs_per_second"]
    assert hi > 2 * lo > 0


def test_mixed_choices_do_not_leak_across_padding(tok, wavs):
    """An unforced arbiter: the share and MACs are those of each file encoded alone."""
    loaded = _loaded(tok)
    res = _evaluate(loaded, wavs)
    direct = [_direct(loaded, p) for p in wavs]
    frames = sum(d[2] for d in direct)
    share = sum(d[1] for d in direct) / frames
    assert 0.1 < share < 0.9  # mixed
    assert res["expensive_frame_share"] == pytest.approx(share)
    assert res["encoder_macs_per_second"] == pytest.approx(
        sum(d[0] for d in direct) / sum(d[3] for d in direct), rel=1e-5
    )
    for row, d in zip(res["utterances_detail"], direct, strict=True):
        assert row["expensive_frame_share"] == pytest.approx(d[1] / d[2])


def test_plain_model_reports_macs_and_no_share(tok, wavs):
    loaded = _loaded(tok, encoder="transformer")
    res = _evaluate(loaded, wavs)
    direct = [_direct(loaded, p) for p in wavs]
    assert "expensive_frame_share" not in res
    assert res["encoder_macs_per_second"] == pytest.approx(
        sum(d[0] for d in direct) / sum(d[3] for d in direct), rel=1e-5
    )
    assert all("expensive_frame_share" not in r for r in res["utterances_detail"])
    assert all(r["encoder_macs_per_second"] > 0 for r in res["utterances_detail"])


def test_long_input_costs_are_its_segments_summed(tok):
    """A long input is decoded as segments: its cost covers all of them."""
    loaded = _loaded(tok, force=-100.0)
    x = _speechy(2.5, seed=1)
    rec = Recognizer(
        loaded,
        DecodeSettings(
            method="greedy", batch_size=2, max_segment_seconds=1.0, min_pause_seconds=None
        ),
    )
    assert len(rec.segment(x)) > 1
    cost = rec.recognize([x])[0][0].encoder
    m = frame_macs(loaded.config)
    assert cost.audio_s == pytest.approx(2.5)
    assert cost.expensive_share == 0.0
    assert cost.macs == pytest.approx(cost.frames * (m["shared"] + m["arbiter"] + m["cheap"]))


def test_branch_map_matches_encode_aux_and_plot_writes_png(tok, tmp_path):
    pytest.importorskip("matplotlib")
    loaded = _loaded(tok)
    x = _speechy(0.9, seed=5)
    m = branch_map(loaded, x)
    feats = log_mel(x)
    _, _, aux = _encode_aux(loaded.model)(
        loaded.variables, feats[None], np.zeros((1, len(feats)), np.float32)
    )
    np.testing.assert_array_equal(m.feats, feats)
    assert m.expensive.shape == (math.ceil(len(feats) / 4),)
    np.testing.assert_array_equal(m.expensive, np.asarray(aux["expensive"][0]))
    np.testing.assert_allclose(m.prob, np.asarray(aux["expensive_prob"][0]), rtol=1e-6)
    np.testing.assert_allclose(m.macs, np.asarray(aux["macs"][0]), rtol=1e-6)
    assert 0.0 < m.expensive_share < 1.0  # a random arbiter mixes them
    assert m.expensive_share == pytest.approx(float(np.mean(aux["expensive"])))
    assert m.macs_per_second == pytest.approx(float(np.sum(aux["macs"])) / 0.9, rel=1e-5)
    out = plot_branches(loaded, x, tmp_path / "sub" / "b.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no branching encoder"):
        branch_map(_loaded(tok, encoder="transformer"), x)


def test_cli_eval_and_plot_branches(tok, wavs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    loaded = _loaded(tok, force=100.0)
    mdir = save_model_folder(tmp_path / "branching", loaded.config, tok, loaded.variables)
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in _rows(wavs)))
    args = ["eval", "--model", str(mdir), "--manifest", str(m), "--method", "greedy"]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["expensive_frame_share"] == 1.0 and res["encoder_macs_per_second"] > 0
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "M MACs per second of audio, expensive branch on 100.0% of encoder frames" in text
    out = tmp_path / "b.png"
    argv = ["plot", "branches", "--model", str(mdir), "--audio", str(wavs[1]), "-o", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
