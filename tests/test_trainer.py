"""Trainer: loss goes down, checkpoints resume to the same result, the model folder loads."""

import importlib.util
import json

import jax
import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_recipe

from asr.manifest import read_manifest, write_manifest
from asr.model_io import load_model
from train.configs import get_recipe
from train.data import StepPlan, make_buckets
from train.trainer import train

_cfg = tiny_recipe


def _params(workdir):
    return load_model(workdir / "model").variables


def test_interrupted_run_resumes_to_the_same_result(corpus, tmp_path, monkeypatch):
    from train import trainer

    steps_fns = []  # every train step function built, to count its compiles
    make = trainer.make_train_step
    monkeypatch.setattr(
        trainer, "make_train_step", lambda *a: steps_fns.append(make(*a)) or steps_fns[-1]
    )
    rows = read_manifest(corpus)
    cfg = _cfg()
    train(cfg, rows, tmp_path / "a", progress=False)
    # one bucket, one batch shape: the step compiled once for 8 steps
    assert steps_fns[-1]._cache_size() == 1
    # "killed" after 4 steps (the last checkpoint), then the same command again; a row whose
    # audio is missing is skipped (the rest are those of run a) and the skip is recorded
    bad = dict(rows[0], audio=str(tmp_path / "gone.wav"))
    train(cfg, rows + [bad], tmp_path / "b", progress=False, stop_after=4, skip_bad_rows=True)
    assert not (tmp_path / "b" / "model").exists()
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["data"]["bad_rows_skipped"] == 1 and meta["data"]["rows"] == len(rows)
    # resuming with another recipe is refused, naming what differs, and changes nothing
    with pytest.raises(ValueError, match=r"steps: saved 8, given 10\n.*peak_lr: saved 0.002"):
        train(cfg.replace(steps=10, peak_lr=1e-3), rows, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == meta
    # ... except for the fields that only change how the run is observed and fed
    res = train(
        cfg.replace(ckpt_every=3, data_threads=2),
        rows + [bad],
        tmp_path / "b",
        progress=False,
        skip_bad_rows=True,
    )
    assert res["bad_rows_skipped"] == 1
    assert steps_fns[-1]._cache_size() == 1
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    assert meta["train"]["ckpt_every"] == 3 and meta["train"]["data_threads"] == 2
    assert meta["resumes"] == [
        {
            "step": 4,
            "changes": {"ckpt_every": [4, 3], "data_threads": [1, 2]},
            "data": meta["data"],
        }
    ]
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
    dev = lambda m: [json.loads(ln)["dev_wer"] for ln in m.splitlines() if "dev_wer" in ln]  # noqa: E731
    assert dev(ma) == dev(mb) and len(dev(ma)) == 1


def test_bad_manifest_rows_stop_training_before_it_starts(corpus, tmp_path, capsys, monkeypatch):
    from asr.cli import main

    rows = read_manifest(corpus)
    bad = [
        dict(rows[0], audio=str(tmp_path / "missing.wav"), duration=None),
        dict(rows[1], text="  "),
    ]
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    bad.append(dict(rows[2], audio=str(tmp_path / "noise.wav")))
    bad.extend(dict(rows[3], audio=str(tmp_path / f"m{i}.wav")) for i in range(25))
    manifest = write_manifest(rows + bad, tmp_path / "bad.jsonl")
    code = main(
        ["train", "--config", "tiny", "--data", str(manifest), "--workdir", str(tmp_path / "w")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"28 of {len(rows) + 28} manifest rows cannot be used for training" in err
    n = len(rows)
    for line in (n + 1, n + 2, n + 3):  # each bad row named by its manifest line
        assert f"bad.jsonl:{line}" in err, err
    assert "... and 8 more" in err and "--skip-bad-rows" in err
    assert not (tmp_path / "w").exists()  # nothing written
    # --skip-bad-rows: the rows that pass go to training, and the skip is said
    from train import trainer
    from train.data import check_training_rows

    calls = []
    monkeypatch.setattr(trainer, "train", lambda cfg, rows, wd, **kw: calls.append(kw) or {})
    argv = ["train", "--config", "tiny", "--data", str(manifest), "--workdir", str(tmp_path / "w")]
    assert main([*argv, "--skip-bad-rows"]) == 0
    kw = calls[0]
    assert kw["skip_bad_rows"] is True and kw["row_names"][n] == f"{manifest}:{n + 1}"
    good, n_bad = check_training_rows(rows + bad, kw["row_names"], skip_bad=True)
    assert n_bad == 28 and good == rows
    assert f"skipping 28 of {n + 28} manifest rows" in capsys.readouterr().out
    # a field of the user's own stops training unless declared with --extra-fields
    own = write_manifest([dict(r, accent="scots") for r in rows], tmp_path / "own.jsonl")
    with pytest.raises(ValueError, match="unknown field 'accent'"):
        check_training_rows(read_manifest(own))
    assert check_training_rows(read_manifest(own), extra_fields=("accent",))[1] == 0
    argv = ["train", "--config", "tiny", "--data", str(own), "--workdir", str(tmp_path / "w")]
    calls.clear()
    assert main([*argv, "--extra-fields", "accent"]) == 0
    assert calls[0]["extra_fields"] == ("accent",)


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
    # ... before a recipe is recorded there: the corrected command is a fresh start, not a
    # refused resume
    assert not (tmp_path / "x" / "config.json").exists()


def test_time_limit_stops_with_a_model_and_resumes(corpus, tmp_path):
    rows = read_manifest(corpus)
    cfg = _cfg(steps=4, precompile=True)
    # a start with another recipe that stopped before its first checkpoint (out of memory, a
    # typo seen in the log): the recipe given now replaces it, tokenizer included
    (tmp_path / "w").mkdir()
    other = {"train": cfg.replace(vocab_size=50, steps=99).to_dict(), "model": {}}
    (tmp_path / "w" / "config.json").write_text(json.dumps(other))
    (tmp_path / "w" / "tokenizer.model").write_bytes(b"of another vocabulary")
    (tmp_path / "w" / "metrics.jsonl").write_text('{"step": 2, "loss": 9.0}\n')
    res = train(cfg, rows, tmp_path / "w", progress=False, time_limit=0.0)
    assert res["steps"] == 1  # the limit is checked after each step
    meta = json.loads((tmp_path / "w" / "model" / "config.json").read_text())
    assert meta["steps"] == 1 and meta["complete"] is False
    assert load_model(tmp_path / "w" / "model").config.name == "tiny"
    res = train(cfg, rows, tmp_path / "w", progress=False)  # the same command resumes
    meta = json.loads((tmp_path / "w" / "model" / "config.json").read_text())
    assert res["steps"] == 4 and meta["complete"] is True
    assert json.loads((tmp_path / "w" / "config.json").read_text())["train"]["steps"] == 4
    lines = (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines if "loss" in ln] == [2, 4]  # 9.0 is gone
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


class _CountCompiles:
    """Counts XLA compilations (jax.monitoring's backend-compile events) inside a `with`."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on)
        return self

    def _on(self, event, duration, **kw):
        self.count += event == self.EVENT

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._on)


def test_dev_evaluation_is_asr_eval_and_compiles_nothing_for_new_weights(corpus):
    from asr.model_io import LoadedModel
    from asr.models import build_model
    from asr.models.transducer import init_variables
    from asr.recognizer import DecodeSettings, Recognizer, evaluate_manifest
    from asr.tokenizer import Tokenizer
    from train.trainer import evaluate

    rows = read_manifest(corpus)
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=40)
    model = build_model(get_recipe("tiny").model_config(tok.vocab_size))
    dev = rows[:3]
    v1, v2 = (init_variables(model, jax.random.PRNGKey(s)) for s in (0, 1))
    evaluate(model, v1, tok, dev)  # compiles the decode for this model and batch shape
    with _CountCompiles() as c:
        res = evaluate(model, v2, tok, dev)
    assert c.count == 0, f"{c.count} compilations evaluating new weights"
    # the number `asr eval` reports for these weights (default settings: beam search)
    ref = evaluate_manifest(
        Recognizer(LoadedModel(model, v2, tok, model.config, "x"), DecodeSettings()), dev
    )
    assert res == {"wer": ref["wer"], "utterances": 3}


def test_train_step_compiles_once_per_batch_shape():
    from asr.models import build_model
    from train.trainer import init_state, make_optimizer, make_train_step

    cfg = get_recipe("tiny").replace(steps=10, spec_start_step=2)
    model = build_model(cfg.model_config(16))
    tx = make_optimizer(cfg)
    state = init_state(model, tx, jax.random.PRNGKey(0))
    step_fn = make_train_step(model, cfg, tx)
    rng = np.random.default_rng(0)
    for _ in range(3):  # fresh arrays each step, as the data pipeline gives
        batch = {
            "feats": rng.standard_normal((2, 64, 80)).astype(np.float32),
            "feat_paddings": np.zeros((2, 64), np.float32),
            "labels": rng.integers(2, 16, (2, 8)).astype(np.int32),
            "label_paddings": np.zeros((2, 8), np.float32),
        }
        state, _ = step_fn(state, batch, jax.random.PRNGKey(0))
    assert int(state.step) == 3 and step_fn._cache_size() == 1


def test_audio_that_disappears_during_training_is_an_error_naming_it(corpus, tmp_path):
    import shutil

    from asr.audio import AudioError
    from asr.tokenizer import Tokenizer
    from train.data import training_dataset

    rows = []
    for i, r in enumerate(r for r in read_manifest(corpus) if r["split"] == "train"):
        shutil.copy(r["audio"], tmp_path / f"{i}.wav")
        rows.append(dict(r, audio=str(tmp_path / f"{i}.wav")))
    tok = Tokenizer.train([r["text"] for r in rows], vocab_size=40)
    cfg = _cfg(steps=3, frames_per_batch=320 * 18, max_batch=18)  # every row in each batch
    ds, _ = training_dataset(rows, tok, cfg, noise_bank=None)
    (tmp_path / "5.wav").unlink()  # after the check before training, say
    with pytest.raises(
        AudioError, match=r"training utterance 5 \(.*5\.wav, text .*could not be read"
    ):
        next(iter(ds))


def test_feature_stats_are_over_all_frames_of_the_chosen_utterances(tmp_path):
    from asr.features import log_mel
    from train.trainer import feature_stats

    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate((0.3, 1.7, 0.9)):  # unequal lengths: frames, not files, count
        t = np.arange(int(seconds * 16000)) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(tmp_path / f"{i}.wav", x.astype(np.float32), 16000, subtype="FLOAT")
        rows.append({"audio": str(tmp_path / f"{i}.wav"), "text": "x"})

    def reference(chosen):  # NumPy, float64: mean and 1 / (std + 1e-3) over every frame
        f = np.concatenate([log_mel(sf.read(r["audio"], dtype="float32")[0]) for r in chosen])
        f = f.astype(np.float64)
        return f.mean(0), 1.0 / (np.sqrt(((f - f.mean(0)) ** 2).mean(0)) + 1e-3)

    stats = feature_stats(rows, n=10)
    mean, istd = reference(rows)
    assert stats["mean"].dtype == np.float32 and stats["mean"].shape == (80,)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["istd"], istd, rtol=1e-4)
    # per-file means averaged would differ: the long file weighs more
    per_file = np.mean([reference([r])[0] for r in rows], axis=0)
    assert np.abs(per_file - mean).max() > 1e-2
    # n < rows: n of them, chosen by the seed, the same each time
    two = feature_stats(rows, n=2, seed=3)
    subsets = [[rows[i] for i in range(3) if i != k] for k in range(3)]
    assert sum(np.allclose(two["mean"], reference(s)[0], atol=1e-5) for s in subsets) == 1
    np.testing.assert_array_equal(two["istd"], feature_stats(rows, n=2, seed=3)["istd"])


def test_a_metric_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    from train.trainer import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 3.0}\n{"step": 4, "loss": 2.5}\n{"step": 6, "lo')
    _truncate_metrics(path, 4)
    assert path.read_text() == '{"step": 2, "loss": 3.0}\n{"step": 4, "loss": 2.5}\n'
