"""Shared fixtures: paths to the real-speech folder (skipped when absent) and small models;
the run's XLA options and compilation cache, and the order in which parallel workers take the test files."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data"))

# The slowest files, slowest first (measured, `--durations=0` summed per file): with pytest-xdist
# (`make test` runs two workers, each taking whole files) they are handed out first, so the
# workers end together instead of one waiting on a long file picked up last. Only an order: a
# stale list makes the run slower, never wrong.
SLOW_FILES = (
    "test_compression_training.py",
    "test_trainer.py",
    "test_end_to_end.py",
    "test_unseen_voice.py",
    "test_biasing.py",
    "test_decoding.py",
    "test_hw_runtime.py",
    "test_kill_resume.py",
    "test_quant.py",
    "test_branching.py",
    "test_hw_branching.py",
    "test_distill_training.py",
    "test_streaming.py",
    "test_cli.py",
)


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole run, in a temporary folder removed at
    the end: most of the suite's time is XLA compiling, and many tests compile the same
    computations (the tiny model's train step in each training test, every call of `train` in a
    resume test). The workers of a parallel run and the subprocesses of the command-line tests
    inherit it through the environment. A JAX_COMPILATION_CACHE_DIR set by the caller is used
    as it is."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        # LLVM without its optimization passes: most of the suite's computations run once or a
        # few times on tiny shapes, where compiling is the cost (measured, contended 2 cores: a
        # training test 42 -> 27 s, the edge benchmark test 60 -> 38 s; a decoding-heavy test
        # 20 -> 30 s). Same arithmetic (no fast-math either way), so the same results. Read
        # when the first backend starts, which is after this hook; workers and subprocesses
        # inherit it.
        os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") is not None:
        return
    path = tempfile.mkdtemp(prefix="asr-tests-xla-cache-")
    config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the many small ones too
    if "jax" in sys.modules:  # already imported (by a plugin): its options have been read
        import jax

        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_collection_modifyitems(config, items):
    """In a pytest-xdist worker: the files of SLOW_FILES first, in that order, each file's tests
    in their own order (`--dist loadfile --no-loadscope-reorder` hands files out in this order);
    a run without workers keeps pytest's order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-speech folder not found at {SHARED_DATA}")
    return SHARED_DATA


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A manifest of 20 eSpeak NG utterances of PHRASES (two voices; 2 dev rows): the small
    training set of the trainer tests."""
    import soundfile as sf

    from asr.manifest import write_manifest
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


def tiny_recipe(**kw):
    """The `tiny` recipe shrunk for tests: one 320-frame bucket, a few steps, batches of 6."""
    from train.configs import get_recipe

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


def random_variables(model, seed: int = 7, num_frames: int = 32, half: bool = False):
    """Random variables of `model`, shaped as `init_variables` makes them (traced, not
    compiled): kernels ~ N(0, 1/fan_in), norm statistics 0 / 1, everything else ~ N(0, 0.1)
    (scales around 1); with `half` the non-kernels are rounded to float16 values (what a model
    folder or an artifact stores)."""
    import jax
    import numpy as np

    from asr.models.quant import contracting_axes, is_kernel
    from asr.models.transducer import init_variables

    shapes = jax.eval_shape(
        lambda k: init_variables(model, k, num_frames=num_frames), jax.random.key(0)
    )
    rng = np.random.default_rng(seed)

    def draw(path, s):
        names = tuple(str(getattr(k, "key", k)) for k in path)
        if names[0] == "norm":
            return np.full(s.shape, 1.0 if names[-1] == "istd" else 0.0, np.float32)
        if is_kernel(path):
            fan_in = int(np.prod([s.shape[a] for a in contracting_axes(path, s.shape)]))
            return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
        base = 1.0 if names[-1] == "scale" else 0.0
        x = (base + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        return x.astype(np.float16).astype(np.float32) if half else x

    return jax.tree_util.tree_map_with_path(draw, shapes)
