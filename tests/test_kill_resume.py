"""Kill training at any moment (SIGKILL: no cleanup, no `finally`), run the same command again:
it resumes from the last complete checkpoint and ends with the parameters of a run that was
never interrupted, bit for bit.

Each run is a subprocess of a small driver (`DRIVER`) that trains the tiny model for 8 steps
(checkpoints every 4) and, to kill itself at a chosen moment, patches the train step or orbax's
checkpoint finalization. Runs share a persistent JAX compilation cache, so only the first one
compiles.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from asr.manifest import write_manifest
from asr.model_io import load_model

PHRASES = ["turn on the lights", "call mom", "stop", "play some jazz", "yes", "set a timer"]
CFG = dict(
    bucket_frames=[320],
    steps=8,
    frames_per_batch=960,
    max_batch=3,
    warmup_steps=2,
    eval_every=8,
    eval_utterances=1,
    ckpt_every=4,
    log_every=2,
    spec_start_step=0,
    data_threads=1,
)

# argv: config JSON, manifest, work folder, mode ("none", "step", "save"), n.
#   step: SIGKILL before step n runs (steps 0..n-1 done), once checkpoint `wait` is complete;
#   save: SIGKILL when orbax is about to finalize checkpoint n (all its files written into a
#   temporary folder, not yet renamed into place).
DRIVER = """
import json, os, signal, sys, time
from pathlib import Path
cfg_kw, manifest, workdir, mode, n, wait = json.loads(sys.argv[1]), *sys.argv[2:6], sys.argv[6]
n = int(n)
from asr.manifest import read_manifest
from train import trainer
from train.configs import get_recipe

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "step":
    make = trainer.make_train_step
    def make_killing(*a):
        fn = make(*a)
        def step(state, batch, rng, *rest):
            if int(state.step) == n:
                ckpt = Path(workdir) / "checkpoints" / wait
                for _ in range(600):  # checkpoint `wait` is saved asynchronously
                    if ckpt.is_dir():
                        break
                    time.sleep(0.05)
                die()
            return fn(state, batch, rng, *rest)
        return step
    trainer.make_train_step = make_killing
elif mode == "save":
    from orbax.checkpoint._src.path import atomicity
    cls = atomicity.AtomicRenameTemporaryPath
    finalize = cls.finalize
    async def finalize_or_die(self):
        if self.get_final().name == str(n):
            die()
        return await finalize(self)
    cls.finalize = finalize_or_die
cfg = get_recipe("tiny").replace(**cfg_kw)
print("RESULT", json.dumps(trainer.train(cfg, read_manifest(manifest), workdir, progress=False)))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(manifest, environment for the runs, work folder of an uninterrupted run)."""
    from train.corpus.espeak import synthesize

    root = tmp_path_factory.mktemp("kill")
    rows = []
    for i, text in enumerate(PHRASES * 2):
        x, sr = synthesize(text, voice=["en-us", "en-gb+f2"][i % 2], rate_wpm=170)
        sf.write(root / f"{i}.wav", x, sr)
        split = "dev" if i == 3 else "train"
        rows.append({"audio": f"{i}.wav", "text": text, "duration": len(x) / sr, "split": split})
    for r in rows:
        r["audio"] = str(root / r["audio"])
    manifest = write_manifest(rows, root / "m.jsonl")
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    ref = root / "ref"
    proc = _run(manifest, env, ref)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return manifest, env, ref


def _run(manifest, env, workdir, mode="none", n=0, wait=""):
    args = [json.dumps(CFG), str(manifest), str(workdir), mode, str(n), wait]
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args], env=env, capture_output=True, text=True, timeout=300
    )


def _assert_same_run(ref, workdir):
    a, b = load_model(ref).variables, load_model(workdir).variables  # newest checkpoints
    leaves = jax.tree_util.tree_leaves
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    lines = lambda w: (w / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert lines(workdir) == lines(ref) or [
        {k: v for k, v in json.loads(ln).items() if k != "audio_s_per_s"} for ln in lines(workdir)
    ] == [{k: v for k, v in json.loads(ln).items() if k != "audio_s_per_s"} for ln in lines(ref)]


def _checkpoints(workdir):
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def test_killed_between_checkpoints_resumes_to_the_same_run(setup, tmp_path):
    manifest, env, ref = setup
    w = tmp_path / "w"
    proc = _run(manifest, env, w, "step", 6, wait="4")  # killed before step 7 (done: 6)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert _checkpoints(w) == ["4"]
    proc = _run(manifest, env, w)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 4" in proc.stdout
    assert json.loads(proc.stdout.split("RESULT ")[1])["steps"] == 8
    _assert_same_run(ref, w)


def test_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(setup, tmp_path):
    manifest, env, ref = setup
    w = tmp_path / "w"
    proc = _run(manifest, env, w, "save", 8)  # killed before checkpoint 8 is complete
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpts = _checkpoints(w)
    assert ckpts[0] == "4" and len(ckpts) == 2 and ckpts[1].startswith("8.orbax-checkpoint-tmp")
    assert any((w / "checkpoints" / ckpts[1]).rglob("*")), "nothing of checkpoint 8 written"
    assert not (w / "model").exists()
    proc = _run(manifest, env, w)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from step 4" in proc.stdout
    assert _checkpoints(w) == ["4", "8"]  # the half-written one is gone
    _assert_same_run(ref, w)
    meta = json.loads((w / "model" / "config.json").read_text())
    assert meta["complete"] is True and meta["steps"] == 8
