"""Trainer: loss goes down, checkpoints resume to the same result, the model folder loads."""

import importlib.util
import json

import jax
import numpy as np
import pytest
import soundfile as sf

from asr.manifest import read_manifest, write_manifest
from asr.model_io import load_model
from train.configs import get_recipe
from train.data import StepPlan, make_buckets
from train.trainer import train

PHRASES = [
    "turn on the lights",
    "call mom",
    "stop",
    "play some jazz",
    "yes",
    "set a timer",
    "what's the weather",
    "seven",
    "go",
    "no",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from train.corpus.espeak import synthesize

    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, text in enumerate(PHRASES * 2):
        x, sr = synthesize(text, voice=["en-us", "en-gb+f2"][i % 2], rate_wpm=170)
        p = root / f"{i}.wav"
        sf.write(p, x, sr)
        rows.append(
            {
                "audio": str(p),
                "text": text,
                "duration": len(x) / sr,
                "split": "dev" if i in (3, 14) else "train",
            }
        )
    return write_manifest(rows, root / "m.jsonl")


def _cfg(**kw):
    base = dict(
        bucket_frames=(320,),
        steps=8,
        frames_per_batch=1200,
        max_batch=6,
        warmup_steps=2,
        eval_every=8,
        eval_utterances=2,
        ckpt_every=4,
        log_every=2,
        spec_start_step=0,
        data_threads=1,
    )
    base.update(kw)
    return get_recipe("tiny").replace(**base)


def _params(workdir):
    return load_model(workdir / "model").variables


def test_interrupted_run_resumes_to_the_same_result(corpus, tmp_path):
    rows = read_manifest(corpus)
    cfg = _cfg()
    train(cfg, rows, tmp_path / "a", progress=False)
    # "killed" after 4 steps (the last checkpoint), then the same command again
    train(cfg, rows, tmp_path / "b", progress=False, stop_after=4)
    assert not (tmp_path / "b" / "model").exists()
    train(cfg, rows, tmp_path / "b", progress=False)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # the metric log has each step once, as if never interrupted
    steps = [
        json.loads(ln)["step"]
        for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if "loss" in ln
    ]
    assert steps == [2, 4, 6, 8], steps
    ma = (tmp_path / "a" / "metrics.jsonl").read_text()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text()
    losses = lambda m: [json.loads(ln)["loss"] for ln in m.splitlines() if "loss" in ln]  # noqa: E731
    np.testing.assert_allclose(losses(ma), losses(mb), rtol=1e-6)


def test_loss_decreases_when_overfitting(corpus, tmp_path):
    rows = read_manifest(corpus)
    cfg = _cfg(
        steps=30,
        ckpt_every=30,
        eval_every=30,
        log_every=10,
        peak_lr=3e-3,
        spec_start_step=1000,
        augment_prob=0.0,
        narrowband_prob=0.0,
    )
    train(cfg, rows, tmp_path / "w", progress=False)
    losses = [
        json.loads(ln)["loss"]
        for ln in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
        if "loss" in ln
    ]
    assert losses[-1] < 0.5 * losses[0], losses
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "w" / "curves.png").stat().st_size > 1000
    if importlib.util.find_spec("tensorboardX"):
        assert list((tmp_path / "w" / "tensorboard").glob("events.out.tfevents.*"))
    loaded = load_model(tmp_path / "w")  # the training folder itself loads (orbax)
    assert loaded.config.name == "tiny"


def test_batches_are_a_function_of_seed_and_step():
    durations = list(np.linspace(0.3, 6.0, 50))
    labels = [int(d * 5) for d in durations]
    cfg = get_recipe("tiny")
    buckets, skipped = make_buckets(durations, labels, cfg, margin=1.12)
    assert skipped == 0
    for b in buckets:
        assert b.batch * b.frames <= max(cfg.frames_per_batch, b.frames)
        assert all(durations[i] * 1.12 * 100 < b.frames for i in b.rows)
    w = np.ones(50, np.int64)
    p1, p2 = StepPlan(buckets, 100, 0, w), StepPlan(buckets, 100, 0, w)
    assert [p1[s] for s in (0, 7, 55, 99)] == [p2[s] for s in (99, 55, 7, 0)][::-1]
    assert [p1[s] for s in range(10)] != [StepPlan(buckets, 100, 1, w)[s] for s in range(10)]
    # one epoch covers every utterance
    seen = {i for s in range(p1.per_epoch) for i in p1[s][2]}
    assert seen == set(range(50))


def test_auxiliary_ctc_loss_adds_to_the_transducer_loss():
    import jax.numpy as jnp

    from asr.models import build_model
    from train.trainer import loss_fn

    cfg = get_recipe("tiny").replace(ctc_weight=0.5)
    model = build_model(cfg.model_config(16))
    from asr.models.transducer import init_variables

    v = init_variables(model, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {
        "feats": jnp.asarray(rng.standard_normal((2, 64, 80)), jnp.float32),
        "feat_paddings": jnp.zeros((2, 64)).at[1, 40:].set(1.0),
        "labels": jnp.asarray([[3, 4, 5, 0], [6, 7, 0, 0]], jnp.int32),
        "label_paddings": jnp.asarray([[0, 0, 0, 1], [0, 0, 1, 1]], jnp.float32),
    }
    args = (v["params"], v["norm"], model, batch, jax.random.PRNGKey(1), False)
    loss, m = loss_fn(*args, 0.5)
    assert np.isfinite(float(loss)) and float(m["ctc"]) > 0
    np.testing.assert_allclose(
        float(loss), float(m["transducer"]) + 0.5 * float(m["ctc"]), rtol=1e-6
    )
    grads = jax.grad(lambda p: loss_fn(p, *args[1:], 0.5)[0])(v["params"])
    assert float(jnp.abs(grads["ctc_out"]["kernel"]).sum()) > 0
    loss0, _ = loss_fn(*args)  # without the weight: the transducer loss alone
    np.testing.assert_allclose(float(loss0), float(m["transducer"]), rtol=1e-6)


def _leaves(workdir):
    return jax.tree_util.tree_leaves(_params(workdir))


def test_worker_processes_give_the_same_batches(corpus):
    from asr.tokenizer import Tokenizer
    from train.data import training_dataset

    rows = [r for r in read_manifest(corpus) if r["split"] == "train"]
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=40)
    cfg = _cfg(augment_prob=1.0, narrowband_prob=0.5, steps=5)
    threads, _ = training_dataset(rows, tok, cfg, noise_bank=None, start_step=1)
    workers, _ = training_dataset(
        rows, tok, cfg.replace(data_workers=2), noise_bank=None, start_step=1
    )
    a, b = list(threads), list(workers)
    assert [int(x["step"]) for x in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        for k in x:  # features: one BLAS thread per worker sums in another order
            np.testing.assert_allclose(x[k], y[k], rtol=0, atol=1e-4 if k == "feats" else 0)


def test_fine_tuning_starts_from_the_given_model(corpus, tmp_path):
    rows = read_manifest(corpus)
    train(_cfg(steps=4), rows, tmp_path / "base", progress=False)
    base = tmp_path / "base" / "model"
    # learning rate 0: the fine-tuned model must be the starting model, bit for bit
    cfg = _cfg(steps=2, init_from=str(base), peak_lr=0.0, end_lr=0.0, seed=5)
    train(cfg, rows, tmp_path / "ft", progress=False)
    for x, y in zip(_leaves(tmp_path / "base"), _leaves(tmp_path / "ft"), strict=True):
        np.testing.assert_array_equal(x, y)
    tok = (tmp_path / "ft" / "model" / "tokenizer.model").read_bytes()
    assert tok == (base / "tokenizer.model").read_bytes()
    # a starting model of another size is refused with the reason
    with pytest.raises(ValueError, match="config differs"):
        train(get_recipe("small").replace(init_from=str(base)), rows, tmp_path / "x")


def test_time_limit_stops_with_a_model_and_resumes(corpus, tmp_path):
    rows = read_manifest(corpus)
    cfg = _cfg(steps=4, precompile=True)
    res = train(cfg, rows, tmp_path / "w", progress=False, time_limit=0.0)
    assert res["steps"] == 1  # the limit is checked after each step
    meta = json.loads((tmp_path / "w" / "model" / "config.json").read_text())
    assert meta["steps"] == 1 and meta["complete"] is False
    assert load_model(tmp_path / "w" / "model").config.name == "tiny"
    res = train(cfg, rows, tmp_path / "w", progress=False)  # the same command resumes
    meta = json.loads((tmp_path / "w" / "model" / "config.json").read_text())
    assert res["steps"] == 4 and meta["complete"] is True
    # precompiled steps and a resumed run give the run that never stopped
    train(_cfg(steps=4), rows, tmp_path / "ref", progress=False)
    for x, y in zip(_leaves(tmp_path / "ref"), _leaves(tmp_path / "w"), strict=True):
        np.testing.assert_array_equal(x, y)


def test_real_phrases_join_trimmed_clips_of_one_speaker(tmp_path):
    from train.data import PHRASE_EDGE, join_phrase, real_phrases

    rng = np.random.default_rng(0)
    rows = []
    for spk in ("ann", "bob"):
        for k in range(6):
            x = (0.01 * rng.standard_normal(16000)).astype(np.float32)
            x[4000:12000] += 0.3 * np.sin(np.arange(8000) * (0.05 + 0.01 * k))
            p = tmp_path / f"{spk}{k}.wav"
            sf.write(p, x, 16000, subtype="FLOAT")
            rows.append(
                {"audio": str(p), "text": f"Word{k}!", "speaker": spk, "duration": 1.0,
                 "speech_start": 0.25, "speech_end": 0.75}
            )  # fmt: skip
    phrases = real_phrases(rows, 20, seed=3)
    assert phrases == real_phrases(rows, 20, seed=3) != real_phrases(rows, 20, seed=4)
    for ph in phrases:
        assert 2 <= len(ph["parts"]) <= 6
        assert {rows[p]["speaker"] for p in ph["parts"]} == {ph["speaker"]}
        assert ph["text"] == " ".join(f"word{rows[p]['text'][4]}" for p in ph["parts"])
        x = join_phrase(rows, ph)
        assert abs(len(x) / 16000 - ph["duration"]) < 0.01 * len(ph["parts"])
        # the first part is its clip's speech, cut PHRASE_EDGE before and after the bounds
        clip, _ = sf.read(rows[ph["parts"][0]]["audio"], dtype="float32")
        a, b = int((0.25 - PHRASE_EDGE) * 16000), int((0.75 + PHRASE_EDGE) * 16000)
        np.testing.assert_array_equal(x[: b - a], clip[a:b])


def test_real_phrases_put_real_speech_into_long_buckets(corpus):
    from asr.tokenizer import Tokenizer
    from train.data import is_real, training_dataset

    real = read_manifest(corpus)  # espeak clips without a voice field count as real here
    synthetic = [dict(r, voice={"name": "x"}, duration=r["duration"] * 4) for r in real]
    rows = real + synthetic
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=40)
    cfg = _cfg(bucket_frames=(320, 1600), frames_per_batch=3200, real_phrases=1.0)
    _, info = training_dataset(rows, tok, cfg.replace(real_phrases=0.0), noise_bank=None)
    ds, info2 = training_dataset(rows, tok, cfg, noise_bank=None)
    long_without = [b for b in info["buckets"] if b.frames == 1600][0]
    assert not any(is_real(rows[i]) for i in long_without.rows)
    assert info2["real_phrases"] == len(real)
    long_with = [b for b in info2["buckets"] if b.frames == 1600][0]
    assert len(long_with.rows) > len(long_without.rows)
    batch = next(iter(ds))
    assert batch["feats"].shape[2] == 80 and np.isfinite(batch["feats"]).all()
