"""Teacher-student training: the distillation term in the train step, the teacher's tokenizer,
and the CTC feasibility rule of the auxiliary loss."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_recipe

from asr.lattice import rnnt_loss
from asr.manifest import read_manifest
from asr.models import build_model
from asr.models.transducer import init_variables
from train.configs import get_recipe
from train.trainer import ctc_feasible, loss_fn, teacher_collapsed, train

_cfg = tiny_recipe


def _batch(seed=0, vocab=16):
    rng = np.random.default_rng(seed)
    return {
        "feats": jnp.asarray(rng.standard_normal((2, 64, 80)), jnp.float32),
        "feat_paddings": jnp.zeros((2, 64)).at[1, 40:].set(1.0),
        "labels": jnp.asarray(rng.integers(1, vocab, (2, 4)), jnp.int32),
        "label_paddings": jnp.asarray([[0, 0, 0, 1], [0, 0, 1, 1]], jnp.float32),
    }


def _model(seed, vocab=16):
    model = build_model(get_recipe("tiny").model_config(vocab))
    return model, init_variables(model, jax.random.PRNGKey(seed))


def test_ctc_feasible_matches_brute_force_alignment_count():
    """CTC has an alignment iff frames >= labels + equal adjacent pairs: checked against an
    enumeration of every frame labelling that collapses to the labels."""

    def collapse(path):
        out = [k for k, _ in itertools.groupby(path)]
        return [k for k in out if k != 0]

    for labels in ([1, 1], [1, 2], [2, 2, 2], [1, 2, 1], [3]):
        for n_frames in range(1, 7):
            brute = any(collapse(p) == labels for p in itertools.product(range(4), repeat=n_frames))
            lab = jnp.asarray([labels + [0] * (4 - len(labels))], jnp.int32)
            lpad = jnp.asarray([[0.0] * len(labels) + [1.0] * (4 - len(labels))])
            fpad = jnp.asarray([[0.0] * n_frames + [1.0] * (8 - n_frames)])
            assert bool(ctc_feasible(fpad, lab, lpad)[0]) == brute, (labels, n_frames)


def test_distillation_from_itself_is_zero_and_keeps_the_transducer_loss():
    model, v = _model(0)
    batch = _batch()
    args = (v["params"], v["norm"], model, batch, jax.random.PRNGKey(1), False)
    plain, _ = loss_fn(*args)
    own = teacher_collapsed(model, v, batch)
    loss, m = loss_fn(*args, 0.0, own, 0.7, 1.0)
    # the NLL from the collapsed lattice is the transducer loss of the plain path
    np.testing.assert_allclose(float(m["transducer"]), float(plain), rtol=1e-5)
    assert abs(float(m["distill"])) < 1e-4
    np.testing.assert_allclose(float(loss), float(plain), rtol=1e-4)
    # the per-utterance NLL against an independent evaluation of the transducer loss
    enc, enc_pad = model.apply(v, batch["feats"], batch["feat_paddings"], method="encode")
    assert enc.shape[1] == own.shape[1]


def test_distillation_term_pulls_the_student_towards_the_teacher():
    student, vs = _model(0)
    teacher, vt = _model(3)
    batch = _batch(1)
    lattice = teacher_collapsed(teacher, vt, batch)
    args = (vs["norm"], student, batch, jax.random.PRNGKey(1), False, 0.0, lattice, 1.0)
    kd0 = float(loss_fn(vs["params"], *args)[1]["distill"])
    assert kd0 > 0
    # a few Adam steps on the distillation term alone lower it
    grad = jax.jit(jax.grad(lambda p: loss_fn(p, *args)[1]["distill"]))
    tx = optax.adam(3e-3)
    p = vs["params"]
    opt = tx.init(p)
    for _ in range(10):
        upd, opt = tx.update(grad(p), opt)
        p = optax.apply_updates(p, upd)
    assert float(loss_fn(p, *args)[1]["distill"]) < 0.7 * kd0
    # the teacher gets no gradient: its lattice is a constant
    g = jax.grad(
        lambda t: loss_fn(vs["params"], *args[:6], teacher_collapsed(teacher, t, batch), 1.0)[0]
    )(vt)
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree_util.tree_leaves(g))
    # the transducer part is the same loss as without a teacher
    plain = rnnt_loss(
        lambda e, q: student.apply(vs, e, q, method="joint"),
        *student.apply(vs, batch["feats"], batch["feat_paddings"], method="encode"),
        student.apply(
            vs,
            jnp.concatenate([jnp.zeros((2, 1), jnp.int32), batch["labels"]], 1),
            method="predict",
        ),
        batch["labels"],
        batch["label_paddings"],
    )
    m = loss_fn(vs["params"], *args)[1]
    np.testing.assert_allclose(float(m["transducer"]), float(jnp.mean(plain)), rtol=1e-5)


def test_training_with_a_teacher_logs_the_distillation_term(corpus, tmp_path):
    rows = read_manifest(corpus)
    train(_cfg(steps=4), rows, tmp_path / "teacher", progress=False)
    teacher = tmp_path / "teacher" / "model"
    # the teacher hears the utterances before the room and the channel (`teacher_clean`)
    cfg = _cfg(
        steps=4,
        teacher=str(teacher),
        distill_weight=0.5,
        seed=2,
        teacher_clean=True,
        channel_prob=0.5,
    )
    res = train(cfg, rows, tmp_path / "student", progress=False)
    assert np.isfinite(res["loss"]) and res["distill"] > 0
    np.testing.assert_allclose(res["loss"], res["transducer"] + 0.5 * res["distill"], rtol=1e-3)
    # the student speaks the teacher's tokenizer
    tok = (tmp_path / "student" / "model" / "tokenizer.model").read_bytes()
    assert tok == (teacher / "tokenizer.model").read_bytes()
    meta = json.loads((tmp_path / "student" / "config.json").read_text())
    assert meta["train"]["teacher"] == str(teacher.resolve())
    # a student fine-tuned from a model with another tokenizer is refused before anything runs
    other = [dict(r, text=r["text"] + " zebra quartz") for r in rows]
    train(_cfg(steps=2, vocab_size=48), other, tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="another tokenizer"):
        train(
            _cfg(steps=2, teacher=str(teacher), init_from=str(tmp_path / "other" / "model")),
            rows,
            tmp_path / "refused",
            progress=False,
        )
