"""Background noise in the training stream: noise around the speech (never cutting it, within
the bucket, transcript unchanged, a function of (seed, step)), pure-noise utterances with empty
transcripts (finite loss: -log P(all blanks)), and default recipes unchanged bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

import train.data as data
from asr.audio import load_audio
from asr.features import SAMPLE_RATE, log_mel, num_frames
from asr.text import normalize_text
from asr.tokenizer import Tokenizer
from train.configs import describe_fields, get_recipe

TEXTS = ["turn on the lights", "call mom", "stop", "yes", "play some jazz", "seven"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Tones in faint noise, 0.6-3 s; odd rows synthetic (voice field), even rows real."""
    root = tmp_path_factory.mktemp("noise_stream")
    rng = np.random.default_rng(0)
    out = []
    for i in range(18):
        n = int(rng.uniform(0.6, 3.0) * SAMPLE_RATE)
        x = (0.003 * rng.standard_normal(n)).astype(np.float32)
        x[n // 4 : 3 * n // 4] += 0.3 * np.sin(np.arange(3 * n // 4 - n // 4) * 0.07)
        p = root / f"{i}.wav"
        sf.write(p, x, SAMPLE_RATE, subtype="FLOAT")
        r = {"audio": str(p), "text": TEXTS[i % 6], "duration": n / SAMPLE_RATE,
             "speaker": f"s{i % 3}", "speech_start": n / 4 / SAMPLE_RATE,
             "speech_end": 3 * n / 4 / SAMPLE_RATE}  # fmt: skip
        if i % 2:
            r["voice"] = {"name": "x"}
        out.append(r)
    return out


@pytest.fixture(scope="module")
def tok(rows):
    return Tokenizer.train([r["text"] for r in rows], vocab_size=30)


def _cfg(**kw):
    base = dict(
        bucket_frames=(128, 256, 384, 640),
        steps=10,
        frames_per_batch=1300,
        data_threads=1,
        real_phrases=0.5,
        narrowband_prob=0.5,
    )
    return get_recipe("tiny").replace(**{**base, **kw})


def _batches(rows, tok, cfg, start=0):
    ds, info = data.training_dataset(rows, tok, cfg, None, start_step=start)
    return list(ds), info


def test_new_fields_are_listed_in_help_and_default_off():
    text = describe_fields()
    for name in ("noise_pad_prob", "noise_pad_max_s", "noise_only"):
        assert name in text
    cfg = get_recipe("small")
    assert cfg.noise_pad_prob == 0.0 and cfg.noise_only == 0.0
    assert cfg.override(["noise_pad_prob=0.3", "noise_only=0.1"]).noise_pad_prob == 0.3
    with pytest.raises(ValueError, match="noise_pad_prob"):
        cfg.replace(noise_pad_prob=1.5)


def test_defaults_leave_batches_as_before(rows, tok, monkeypatch):
    """The stream without noise is the one of the code before it: the same plan, and each
    utterance's features from the old augmentation (copied here) with the same draws."""
    from asr.audio import resample
    from train.augment import random_augment

    def called(*a, **k):
        raise AssertionError("noise code ran with the default recipe")

    monkeypatch.setattr(data, "pad_with_noise", called)
    monkeypatch.setattr(data, "noise_only_audio", called)
    cfg = _cfg()
    got, info = _batches(rows, tok, cfg)
    assert info["noise_padded"] == info["noise_only"] == 0

    # the old pipeline, rebuilt from its parts
    all_rows = [r for r in rows if data.is_real(r)]
    phrases = data.real_phrases(all_rows, int(cfg.real_phrases * len(all_rows)), cfg.seed)
    all_rows = all_rows + [r for r in rows if not data.is_real(r)] + phrases
    labels = [tok.encode(normalize_text(r["text"])) for r in all_rows]
    durations = [float(r["duration"]) for r in all_rows]
    buckets, _ = data.make_buckets(durations, [len(y) for y in labels], cfg, data.SPEED_MARGIN)
    assert buckets == info["buckets"]

    def old_features(i, rng):
        r = all_rows[i]
        x = data.join_phrase(all_rows, r) if "parts" in r else load_audio(r["audio"])
        if rng.random() < cfg.augment_prob:
            x = random_augment(x, rng, None)
        if rng.random() < cfg.narrowband_prob:
            x = resample(resample(x, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)[: len(x)]
        x = x * np.float32(10 ** (rng.uniform(-15, 10) / 20))
        return log_mel(np.clip(x, -1.0, 1.0).astype(np.float32))

    real = np.array([data.is_real(r) for r in all_rows])
    plan = data.StepPlan(buckets, cfg.steps, cfg.seed, np.ones(len(all_rows), np.int64))
    assert info["real_repeat"] == 1  # (real share already above real_share here)
    for step, batch in enumerate(got):
        _, bi, idx = plan[step]
        assert batch["feats"].shape[1] == buckets[bi].frames
        for k, i in enumerate(idx):
            f = old_features(i, np.random.default_rng((cfg.seed, step, k)))[: buckets[bi].frames]
            np.testing.assert_array_equal(batch["feats"][k, : len(f)], f)
            assert batch["feat_paddings"][k].sum() == buckets[bi].frames - len(f)
            assert list(batch["labels"][k, : len(labels[i])]) == labels[i]
    assert real.any()


def test_bucketing_reserves_the_padding_and_never_skips_for_it():
    cfg = get_recipe("tiny").replace(bucket_frames=(128, 256, 512))
    durations = [1.0, 1.0, 1.0, 4.0, 5.0]
    pad = [0.0, 1.5, 9.0, 2.0, 1.0]
    plain, skipped0 = data.make_buckets(durations, [3] * 5, cfg, 1.12)
    padded, skipped = data.make_buckets(durations, [3] * 5, cfg, 1.12, pad_s=pad)
    where = {i: b.frames for b in padded for i in b.rows}
    assert skipped == skipped0 == 1  # 5 s is too long whatever the padding
    assert where[0] == 128  # not padded: as before
    assert where[1] == 512 >= data._frames_needed(2.5, 1.12)  # speech plus padding
    assert where[2] == 512  # padding that fits nowhere: the largest bucket holding the speech
    assert where[3] == 512
    assert {b.frames: b.rows for b in plain}[128] == (0, 1, 2)
    # empty transcripts: label buffers are still at least LABEL_ROUND long
    b, _ = data.make_buckets([1.0, 2.0], [0, 0], cfg, 1.12)
    assert all(x.labels == data.LABEL_ROUND for x in b)


def test_pad_budgets_depend_on_seed_and_row_only():
    cfg = get_recipe("tiny").replace(noise_pad_prob=0.3, noise_pad_max_s=2.0)
    a, b = data.noise_pad_budgets(2000, cfg), data.noise_pad_budgets(500, cfg)
    np.testing.assert_array_equal(a[:500], b)
    assert 0.25 < np.mean(a > 0) < 0.35
    assert a.max() <= 4.0 and a[a > 0].min() >= 1.0
    assert not np.array_equal(a, data.noise_pad_budgets(2000, cfg.replace(seed=1)))
    assert not data.noise_pad_budgets(10, cfg.replace(noise_pad_prob=0.0)).any()


def test_pad_with_noise_keeps_the_speech_and_fits_the_limit():
    rng = np.random.default_rng(0)
    x = (0.5 * np.sin(np.arange(16000) * 0.05)).astype(np.float32)
    leads, tails = [], []
    for s in range(300):
        limit = 16000 + int(rng.integers(0, 80000))
        y, lead = data.pad_with_noise(x, np.random.default_rng(s), limit, 2.0)
        assert len(y) <= limit and y.dtype == np.float32 and np.isfinite(y).all()
        tail = len(y) - lead - len(x)
        assert 0 <= lead <= 32000 and 0 <= tail <= 32000
        leads.append(lead / SAMPLE_RATE)
        tails.append(tail)
        # the speech is all there, at `lead`: what is left under it is the noise bed
        under = y[lead + 320 : lead + len(x) - 320] - x[320:-320]
        if lead > 1600:
            before = float(np.sqrt(np.mean(y[:lead].astype(np.float64) ** 2)))
            rms = float(np.sqrt(np.mean(under.astype(np.float64) ** 2)))
            assert 0.2 * before < rms < 5.0 * before, (before, rms)  # one continuous bed
            assert before < 0.35  # below the speech (RMS 0.35; the bed 3-40 dB under it)
    leads = np.array(leads)
    assert np.mean(leads > 1.0) > 0.15  # long lead-ins are common
    assert np.mean(leads == 0) > 0.2 and np.mean(np.array(tails) == 0) > 0.2
    # no room: the speech alone, never cut
    y, lead = data.pad_with_noise(x, np.random.default_rng(0), 8000, 2.0)
    assert lead == 0 and np.array_equal(y, x)
    # determinism
    a = data.pad_with_noise(x, np.random.default_rng(5), 60000, 2.0)
    b = data.pad_with_noise(x, np.random.default_rng(5), 60000, 2.0)
    assert a[1] == b[1] and np.array_equal(a[0], b[0])


def test_max_samples_is_the_most_that_fits():
    for f in (1, 2, 64, 333):
        assert num_frames(data.max_samples(f)) == f
        assert num_frames(data.max_samples(f) + 1) == f + 1


def _stream_rows(rows, cfg):
    """The speech rows of `training_dataset`, in its order: real, synthetic, phrases."""
    real = [r for r in rows if data.is_real(r)]
    phrases = data.real_phrases(real, int(cfg.real_phrases * len(real)), cfg.seed)
    return real + [r for r in rows if not data.is_real(r)] + phrases


def test_padded_stream_keeps_all_speech_in_the_bucket(rows, tok, monkeypatch):
    calls = []
    pad = data.pad_with_noise

    def spy(x, rng, limit, max_s, bank=None):
        y, lead = pad(x, rng, limit, max_s, bank)
        calls.append((len(x), lead, len(y), limit))
        return y, lead

    monkeypatch.setattr(data, "pad_with_noise", spy)
    cfg = _cfg(noise_pad_prob=0.6, augment_prob=1.0, steps=16)
    got, info = _batches(rows, tok, cfg)
    assert info["skipped"] == _batches(rows, tok, cfg.replace(noise_pad_prob=0.0))[1]["skipped"]
    assert info["noise_padded"] > 0 and calls
    for n, _, total, limit in calls:
        assert total <= max(limit, n)  # the speech is never cut ...
        assert total > n  # ... and padded rows had room (it was reserved when bucketing)
    assert any(lead > 0.8 * SAMPLE_RATE for _, lead, _, _ in calls)

    # Rebuilt from the parts: every utterance's features (padding included) fit its batch's
    # frames, and its labels are its transcript's, padded or not.
    all_rows = _stream_rows(rows, cfg)
    pad_s = data.noise_pad_budgets(len(all_rows), cfg)
    loader = data.UtteranceLoader(all_rows, tok, cfg, None, pad_s=pad_s)
    durations = [float(r["duration"]) for r in all_rows]
    lens = [len(y) for y in loader.labels]
    buckets, _ = data.make_buckets(durations, lens, cfg, data.SPEED_MARGIN, pad_s=pad_s)
    assert buckets == info["buckets"]
    plan = data.StepPlan(buckets, cfg.steps, cfg.seed, np.ones(len(all_rows), np.int64))
    padded_seen = 0
    for step, batch in enumerate(got):
        _, bi, idx = plan[step]
        frames = buckets[bi].frames
        for k, i in enumerate(idx):
            f = loader.features(i, np.random.default_rng((cfg.seed, step, k)), frames)
            assert len(f) <= frames, (i, len(f), frames)  # nothing cut
            np.testing.assert_array_equal(batch["feats"][k, : len(f)], f)
            y = tok.encode(normalize_text(all_rows[i]["text"]))
            assert list(batch["labels"][k, : len(y)]) == y
            assert batch["label_paddings"][k].sum() == batch["labels"].shape[1] - len(y)
            padded_seen += int(pad_s[i] > 0)
    assert padded_seen > 0


def test_padded_stream_is_a_function_of_seed_and_step(rows, tok):
    cfg = _cfg(noise_pad_prob=0.5, noise_only=0.3, steps=8)
    a, _ = _batches(rows, tok, cfg)
    b, _ = _batches(rows, tok, cfg.replace(data_threads=2), start=5)  # resumed at step 5
    for x, y in zip(a[5:], b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    c, _ = _batches(rows, tok, cfg.replace(seed=1))
    assert any(not np.array_equal(x["feats"], y["feats"]) for x, y in zip(a, c, strict=True))


def test_noise_only_rows_have_empty_transcripts(rows, tok):
    r = data.noise_only_rows(6, seed=3)
    assert r[:4] == data.noise_only_rows(4, seed=3) != data.noise_only_rows(4, seed=4)
    assert all(x["text"] == "" and 1.0 <= x["duration"] <= 4.0 for x in r)
    assert all(x["duration"] <= 1.5 for x in data.noise_only_rows(6, 3, max_seconds=1.5))
    a = data.noise_only_audio(r[2], 3)
    assert np.array_equal(a, data.noise_only_audio(r[2], 3))
    assert len(a) == round(r[2]["duration"] * SAMPLE_RATE) and 0 < np.abs(a).max() <= 1.0
    assert tok.encode(normalize_text("")) == []

    cfg = _cfg(noise_only=0.5, steps=30)
    got, info = _batches(rows, tok, cfg)
    n_speech = info["real"] + info["synthetic"]
    assert info["noise_only"] == int(0.5 * n_speech)
    assert info["skipped"] == _batches(rows, tok, _cfg())[1]["skipped"]  # none too long
    empty = 0
    for batch in got:
        frames = (1 - batch["feat_paddings"]).sum(1)
        no_words = (batch["label_paddings"] == 1.0).all(1) & (frames > 0)
        empty += int(no_words.sum())
        assert np.isfinite(batch["feats"]).all()
    assert empty > 0


def _tiny_joint(v, d, seed=0):
    w = jax.random.normal(jax.random.PRNGKey(seed), (d, v))

    def joint(e, p):
        return jnp.tanh(e + p) @ w

    return joint, np.asarray(w)


def test_rnnt_loss_of_an_empty_transcript_is_minus_log_p_all_blanks():
    from asr.lattice import rnnt_loss

    b, t, u, d, v = 3, 6, 4, 5, 7
    rng = np.random.default_rng(0)
    enc = rng.standard_normal((b, t, d)).astype(np.float32)
    pred = rng.standard_normal((b, u + 1, d)).astype(np.float32)
    labels = rng.integers(1, v, (b, u)).astype(np.int32)
    lpad = np.ones((b, u), np.float32)
    lpad[2, :2] = 0.0  # row 2 has two labels; rows 0 and 1 none
    fpad = np.zeros((b, t), np.float32)
    fpad[1, 4:] = 1.0  # row 1: 4 frames
    joint, w = _tiny_joint(v, d)
    got = np.asarray(rnnt_loss(joint, enc, fpad, pred, labels, lpad, blank_id=0, time_chunk=2))

    def logp(bi, ti, ui):  # NumPy log-softmax of the joint at one node
        z = np.tanh(enc[bi, ti].astype(np.float64) + pred[bi, ui]) @ w
        return z - np.log(np.sum(np.exp(z - z.max()))) - z.max()

    for bi, tb in ((0, 6), (1, 4)):
        want = -sum(logp(bi, ti, 0)[0] for ti in range(tb))
        np.testing.assert_allclose(got[bi], want, rtol=1e-5)
    assert np.isfinite(got).all() and got[2] > 0
    grad = jax.grad(lambda e: rnnt_loss(joint, e, fpad, pred, labels, lpad).sum())(enc)
    assert np.isfinite(np.asarray(grad)).all()


def test_ctc_and_train_loss_take_empty_transcripts():
    import optax

    from asr.models import build_model
    from asr.models.transducer import init_variables
    from train.trainer import loss_fn

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 5, 6)).astype(np.float32)
    ctc = optax.ctc_loss(
        logits,
        np.zeros((2, 5), np.float32),
        np.zeros((2, 3), np.int32),
        np.ones((2, 3)),
        blank_id=0,
    )
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(ctc), -lp[:, :, 0].sum(1), rtol=1e-5)

    cfg = get_recipe("tiny").replace(ctc_weight=0.5)
    model = build_model(cfg.model_config(16))
    var = init_variables(model, jax.random.PRNGKey(0))
    batch = {
        "feats": jnp.asarray(rng.standard_normal((2, 64, 80)), jnp.float32),
        "feat_paddings": jnp.zeros((2, 64)).at[1, 40:].set(1.0),
        "labels": jnp.asarray([[3, 4, 5, 0], [0, 0, 0, 0]], jnp.int32),
        "label_paddings": jnp.asarray([[0, 0, 0, 1], [1, 1, 1, 1]], jnp.float32),
    }
    args = (var["params"], var["norm"], model, batch, jax.random.PRNGKey(1), True, 0.5)
    step = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, *args[1:]), has_aux=True))
    (loss, m), grads = step(var["params"])
    assert np.isfinite(float(loss)) and np.isfinite(float(m["ctc"]))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))
