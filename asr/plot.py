"""Pictures of what a model does: the biasing attention over an utterance.

`plot_attention` draws the log-mel spectrogram of an utterance and, under it on the same time
axis, the learned biasing network's attention over the context list (averaged over heads;
rows: "<no-bias>" and each phrase, columns: 40 ms encoder frames), as in Figure 2 of Chang et
al. 2021. matplotlib is a dev extra, imported only when a picture is drawn.

References: Chang et al. 2021, "Context-Aware Transformer Transducer for Speech Recognition"
(ASRU 2021).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from asr.audio import SAMPLE_RATE, load_audio, validate_audio
from asr.context import make_context, tokenize_phrases
from asr.features import HOP_LENGTH, log_mel
from asr.models.biasing import context_arrays

NO_BIAS_LABEL = "<no-bias>"


def attention_map(loaded, audio, phrases: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The numbers `plot_attention` draws.

    Args:
      loaded: an `asr.model_io.LoadedModel` with a biasing network (`config.bias_dim` > 0).
      audio: a path (any format and rate `asr.audio.load_audio` reads) or f32[N] 16 kHz samples.
      phrases: the context list (normalized and deduplicated as `asr.context.make_context`
        does).

    Returns:
      (feats f32[T, n_mels] log-mel frames (10 ms), weights f32[T', 1 + P] attention averaged
      over heads for the T' = ceil(T / 4) encoder frames (40 ms), column 0 the no-bias entry,
      labels: "<no-bias>" and the P normalized phrases).
    """
    if loaded.config.bias_dim <= 0:
        raise ValueError(
            f"{loaded.source}: this model has no biasing network (bias_dim 0); train one with "
            "--set bias_dim=..."
        )
    if isinstance(audio, (str, Path)):
        x = load_audio(audio)
    else:
        x = validate_audio(audio, SAMPLE_RATE, name="audio")
    feats = log_mel(x)
    context = make_context(phrases)
    tokens = tokenize_phrases(loaded.tokenizer, context)
    ctx = context_arrays([tokens])
    w = loaded.model.apply(
        jax.device_put(loaded.variables),
        feats[None],
        np.zeros((1, len(feats)), np.float32),
        ctx,
        method=type(loaded.model).bias_attention,
    )  # -> [1, H, T', P_bucket + 1]
    w = np.asarray(w)[0].mean(axis=0)[:, : 1 + len(context)]  # -> [T', 1 + P]
    return feats, w, [NO_BIAS_LABEL, *context.phrases]


def plot_attention(model, audio, phrases: list[str], out: str | Path) -> Path:
    """Writes a PNG: the log-mel spectrogram on top, the biasing attention map below it
    (x: time in seconds, y: "<no-bias>" and each phrase; weights averaged over heads).

    `model`: a `LoadedModel` or anything `asr.model_io.load_model` takes (a model folder, a
    training work folder, "default"); `audio`: a path or f32[N] 16 kHz samples. Returns `out`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from asr.model_io import LoadedModel, load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    feats, w, labels = attention_map(loaded, audio, phrases)
    seconds = len(feats) * HOP_LENGTH / SAMPLE_RATE
    enc_seconds = w.shape[0] * 4 * HOP_LENGTH / SAMPLE_RATE  # 4x subsampled frames
    height = 2.2 + 0.22 * len(labels)
    fig, ax = plt.subplots(
        2,
        1,
        figsize=(max(6.0, 1.6 * seconds + 2.5), min(height + 2.5, 30.0)),
        sharex=True,
        gridspec_kw={"height_ratios": [2.2, max(1.0, 0.22 * len(labels))]},
    )
    ax[0].imshow(
        feats.T, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, feats.shape[1])
    )
    ax[0].set(ylabel="mel bin", title="log-mel spectrogram")
    im = ax[1].imshow(
        w.T,
        origin="upper",
        aspect="auto",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        extent=(0, enc_seconds, len(labels) - 0.5, -0.5),
    )
    ax[1].set_yticks(range(len(labels)), labels)
    ax[1].set(xlabel="time (s)", title="biasing attention (mean over heads)")
    fig.colorbar(im, ax=ax, location="right", shrink=0.6, label="weight")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
