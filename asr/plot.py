"""Pictures of what a model does: the biasing attention over an utterance, and what compression
did to its weights.

`plot_attention` draws the log-mel spectrogram of an utterance and, under it on the same time
axis, the learned biasing network's attention over the context list (averaged over heads;
rows: "<no-bias>" and each phrase, columns: 40 ms encoder frames), as in Figure 2 of Chang et
al. 2021. matplotlib is a dev extra, imported only when a picture is drawn.

`plot_branches` draws, for a branching encoder (`asr.models.branching`), the log-mel
spectrogram of an utterance with each 40 ms encoder frame shaded by the branch the arbiter sent
it through (a colour band under it too, and the arbiter's probability of "expensive"), titled
with the share of expensive frames and the encoder's multiply-accumulates per second of audio.

`plot_sparsity` draws a sparsified training run: the share of exact zeros per layer over the
steps (thin lines, encoder layers coloured by depth), over all eligible weights (thick black)
and the schedule's target (dashed), from the work folder's metrics.jsonl, as the
sparsification figures of Zhu & Gupta 2017.

`plot_weight_histograms` draws, for a few representative kernels, the weights of two models
(before and after quantization-aware training, post-training quantization, ...) in units of
their per-output-channel quantization step (`level_units`), with the integer levels marked:
weights that cluster on the levels (and exact zeros, counted apart) show.

References: Chang et al. 2021, "Context-Aware Transformer Transducer for Speech Recognition"
(ASRU 2021); Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning
for model compression" (arXiv:1710.01878).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from asr.audio import SAMPLE_RATE, load_audio, validate_audio
from asr.context import make_context, tokenize_phrases
from asr.features import HOP_LENGTH, log_mel
from asr.models.biasing import context_arrays
from asr.models.quant import MAX_BITS, contracting_axes, kernel_table, qmax, quant_step

NO_BIAS_LABEL = "<no-bias>"
EXPENSIVE_COLOR = "tab:red"
CHEAP_COLOR = "tab:cyan"


def _save(fig, out) -> Path:
    """Writes `fig` to the PNG file `out` (its folder created) and closes it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


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
    return _save(fig, out)


# --------------------------------------------------------------------------- branches


class BranchMap(NamedTuple):
    """The numbers `plot_branches` draws (`branch_map`)."""

    feats: np.ndarray  # f32[T, n_mels] log-mel frames (10 ms)
    expensive: np.ndarray  # f32[T'] per encoder frame (40 ms): 1 expensive branch, 0 cheap
    prob: np.ndarray  # f32[T'] the arbiter's probability of the expensive branch
    macs: np.ndarray  # f32[T'] the encoder's multiply-accumulates per frame
    seconds: float  # length of the audio

    @property
    def expensive_share(self) -> float:
        return float(np.mean(self.expensive)) if self.expensive.size else 0.0

    @property
    def macs_per_second(self) -> float:
        return float(np.sum(self.macs, dtype=np.float64)) / max(self.seconds, 1e-9)


def is_branching(config) -> bool:
    return getattr(config, "encoder", "transformer") == "branching"


def branch_map(loaded, audio) -> BranchMap:
    """The branch each encoder frame of `audio` takes, as `asr.recognizer` would run it (the
    whole input in one pass, without the tail silence the recognizer appends).

    Args:
      loaded: an `asr.model_io.LoadedModel` with a branching encoder (`config.encoder ==
        "branching"`).
      audio: a path (any format and rate `asr.audio.load_audio` reads) or f32[N] 16 kHz samples.

    Returns: a `BranchMap` over the T' = ceil(T / 4) encoder frames of the T feature frames.
    """
    if not is_branching(loaded.config):
        raise ValueError(
            f"{loaded.source}: this model has no branching encoder (its config has encoder "
            f"{getattr(loaded.config, 'encoder', 'transformer')!r}); train one with "
            "--set encoder=branching"
        )
    if isinstance(audio, (str, Path)):
        x = load_audio(audio)
    else:
        x = validate_audio(audio, SAMPLE_RATE, name="audio")
    feats = log_mel(x)
    encode = jax.jit(functools.partial(loaded.model.apply, method="encode_aux"))
    _, _, aux = encode(
        jax.device_put(loaded.variables), feats[None], np.zeros((1, len(feats)), np.float32)
    )
    aux = jax.device_get(aux)
    return BranchMap(
        feats=feats,
        expensive=np.asarray(aux["expensive"][0], np.float32),
        prob=np.asarray(aux["expensive_prob"][0], np.float32),
        macs=np.asarray(aux["macs"][0], np.float32),
        seconds=len(x) / SAMPLE_RATE,
    )


def plot_branches(model, audio, out: str | Path) -> Path:
    """Writes a PNG: the log-mel spectrogram with each encoder frame (40 ms) shaded by the
    branch that processed it (red expensive, cyan cheap), a band of the same colours under it
    and the arbiter's probability of the expensive branch below that (x: time in seconds); the
    title gives the share of expensive frames and the encoder's MACs per second of audio.

    `model`: a `LoadedModel` with a branching encoder or anything `asr.model_io.load_model`
    takes; `audio`: a path or f32[N] 16 kHz samples. Returns `out`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, to_rgba
    from matplotlib.patches import Patch

    from asr.model_io import LoadedModel, load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    m = branch_map(loaded, audio)
    seconds = len(m.feats) * HOP_LENGTH / SAMPLE_RATE
    enc_seconds = len(m.expensive) * 4 * HOP_LENGTH / SAMPLE_RATE  # 4x subsampled frames
    n_mels = m.feats.shape[1]
    fig, ax = plt.subplots(
        3,
        1,
        figsize=(max(6.0, 1.6 * seconds + 2.5), 5.6),
        sharex=True,
        gridspec_kw={"height_ratios": [3.0, 0.35, 1.0]},
    )
    ax[0].imshow(
        m.feats.T, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, n_mels)
    )
    colors = np.array([to_rgba(CHEAP_COLOR), to_rgba(EXPENSIVE_COLOR)])
    shade = colors[(m.expensive > 0.5).astype(int)][None].copy()  # -> [1, T', 4]
    shade[..., 3] = 0.3
    ax[0].imshow(shade, aspect="auto", interpolation="nearest", extent=(0, enc_seconds, 0, n_mels))
    ax[0].set(ylabel="mel bin", ylim=(0, n_mels))
    ax[0].set_title(
        f"branches: expensive on {100 * m.expensive_share:.1f}% of {len(m.expensive)} encoder "
        f"frames, {m.macs_per_second / 1e6:.2f} M encoder MACs per second of audio",
        fontsize=10,
    )
    ax[0].legend(
        handles=[
            Patch(color=EXPENSIVE_COLOR, label="expensive"),
            Patch(color=CHEAP_COLOR, label="cheap"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    ax[1].imshow(
        (m.expensive > 0.5).astype(np.float32)[None],
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap([CHEAP_COLOR, EXPENSIVE_COLOR]),
        vmin=0.0,
        vmax=1.0,
        extent=(0, enc_seconds, 0, 1),
    )
    ax[1].set_yticks([])
    ax[1].set_ylabel("branch", rotation=0, ha="right", va="center")
    edges = np.arange(len(m.prob) + 1) * 4 * HOP_LENGTH / SAMPLE_RATE
    ax[2].stairs(m.prob, edges, color="black", lw=1.0)
    ax[2].axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax[2].set(
        xlabel="time (s)",
        ylabel="P(expensive)",
        ylim=(-0.03, 1.03),
        xlim=(0, max(seconds, enc_seconds)),
    )
    return _save(fig, out)


# --------------------------------------------------------------------------- sparsification

SPARSITY_HINT = (
    "train with sparsity on (e.g. `asr train ... --set sparsity=0.5`) to log the share of zero "
    "weights per layer (zeros/<layer> in metrics.jsonl)"
)


def sparsity_curves(workdir_or_metrics: str | Path) -> dict:
    """The numbers `plot_sparsity` draws, from a training work folder (its metrics.jsonl) or a
    metrics.jsonl itself.

    Returns {"step": i64[N] sorted, "zeros": f64[N] share of zeros over all eligible weights,
    "target": f64[N] the schedule's share, "layers": {layer name: f64[N]}} over the N logged
    training steps that carry `zeros/<layer>` keys (NaN where a line lacks a key; a step logged
    twice, as after a resume, keeps its last line). ValueError when the file is missing or has
    no per-layer zero shares.
    """
    path = Path(workdir_or_metrics)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(
            f"{path}: no such work folder or metrics file (training writes "
            "<workdir>/metrics.jsonl); " + SPARSITY_HINT
        )
    lines = path.read_text().splitlines()
    by_step: dict[int, dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # the line a running training is writing
                break
            raise ValueError(f"{path}:{i}: not a JSON line") from None
        if isinstance(m, dict) and "step" in m and any(k.startswith("zeros/") for k in m):
            by_step.setdefault(int(m["step"]), {}).update(m)
    if not by_step:
        raise ValueError(
            f"{path}: no per-layer zero shares (zeros/<layer> keys): this run trained without "
            "sparsity, or has not logged a step yet; " + SPARSITY_HINT
        )
    steps = sorted(by_step)
    names: dict[str, None] = {}
    for s in steps:
        names.update(
            dict.fromkeys(k[len("zeros/") :] for k in by_step[s] if k.startswith("zeros/"))
        )

    def column(key: str) -> np.ndarray:
        return np.array([float(by_step[s].get(key, np.nan)) for s in steps], np.float64)

    return {
        "step": np.array(steps, np.int64),
        "zeros": column("zeros"),
        "target": column("sparsity_target"),
        "layers": {n: column(f"zeros/{n}") for n in names},
    }


def _layer_group(name: str) -> tuple[str, int | None]:
    """(group, encoder depth): ("encoder", k) for encoder/layer_k/..., ("encoder front end",
    None) for the rest of the encoder, (first path part, None) otherwise (predictor, joiner,
    ctc_out)."""
    parts = name.split("/")
    if parts[0] == "encoder":
        m = re.fullmatch(r"layer_(\d+)", parts[1]) if len(parts) > 1 else None
        return ("encoder", int(m.group(1))) if m else ("encoder front end", None)
    return parts[0], None


_GROUP_COLORS = {
    "encoder front end": "0.55",
    "predictor": "tab:orange",
    "joiner": "tab:red",
    "ctc_out": "tab:purple",
}
_OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_sparsity(workdir_or_metrics: str | Path, out: str | Path) -> Path:
    """Writes a PNG of a sparsified training run (see `sparsity_curves`): x the step, y the
    share of zero weights (0..1); one thin line per layer (encoder layers coloured by depth,
    front end grey, predictor orange, joiner red, CTC head purple), all eligible weights thick
    black, the schedule's target dashed. Returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    c = sparsity_curves(workdir_or_metrics)
    steps = c["step"]
    groups = {n: _layer_group(n) for n in c["layers"]}
    depths = sorted({d for _, d in groups.values() if d is not None})
    cmap = plt.get_cmap("viridis")
    depth_color = {d: cmap(0.05 + 0.8 * i / max(len(depths) - 1, 1)) for i, d in enumerate(depths)}
    others = [g for g in dict.fromkeys(g for g, d in groups.values() if d is None)]
    group_color = {
        g: _GROUP_COLORS.get(g, _OTHER_COLORS[i % len(_OTHER_COLORS)]) for i, g in enumerate(others)
    }
    marker = "o" if len(steps) == 1 else None

    fig, ax = plt.subplots(figsize=(9.0, 4.8))
    for name, values in c["layers"].items():
        g, d = groups[name]
        color = depth_color[d] if d is not None else group_color[g]
        ax.plot(steps, values, color=color, lw=0.8, alpha=0.75, marker=marker, ms=3)
    ax.plot(steps, c["target"], "--", color="0.25", lw=1.6, marker=marker)
    ax.plot(steps, c["zeros"], color="black", lw=2.6, marker=marker)

    handles = [
        Line2D([], [], color="black", lw=2.6, label="all eligible weights"),
        Line2D([], [], color="0.25", lw=1.6, ls="--", label="target (schedule)"),
    ]
    shown = depths if len(depths) <= 8 else [depths[0], depths[-1]]
    handles += [
        Line2D([], [], color=depth_color[d], lw=1.2, label=f"encoder layer {d}") for d in shown
    ]
    handles += [Line2D([], [], color=group_color[g], lw=1.2, label=g) for g in others]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    final = c["zeros"][~np.isnan(c["zeros"])]
    if final.size:
        ax.annotate(
            f"final: {100 * final[-1]:.1f}% zeros",
            xy=(0.99, 0.02),
            xycoords="axes fraction",
            ha="right",
            va="bottom",
            fontsize=9,
        )
    ax.set(
        xlabel="step",
        ylabel="share of zero weights",
        ylim=(-0.02, 1.02),
        title=f"sparsification, per layer ({len(c['layers'])} layers)",
    )
    ax.grid(alpha=0.3)
    return _save(fig, out)


# --------------------------------------------------------------------------- weight levels

# (what, regex over layer names) of the kernels `plot_weight_histograms` shows by default; the
# middle one of each kind's matches (a middle encoder layer).
REPRESENTATIVE_KERNELS = (
    ("attention qkv", r"(^|/)qkv$"),
    ("feed-forward", r"layer_\d+/Dense_\d+$"),
    ("convolution", r"Conv_\d+$"),
    ("joiner out", r"^joiner/out$"),
)


def kernel_axes(name: str, shape) -> tuple[int, ...]:
    """The contracting axes of the kernel of layer `name` (as `kernel_table` names it)."""
    return contracting_axes((*name.split("/"), "kernel"), shape)


def level_units(w, bits: int, axes) -> np.ndarray:
    """f32 `w / quant_step(w, bits, axes)`: weights in units of their `bits`-bit step (one step
    per slice over `axes`, i.e. per output channel for a kernel's contracting axes). Values lie
    in [-qmax(bits), qmax(bits)]; weights on the levels are integers; zeros stay zero."""
    w = np.asarray(w, np.float32)
    return w / np.asarray(quant_step(w, bits, axes), np.float32)


def representative_layers(names: list[str], n: int = 4) -> list[str]:
    """Up to `n` layer names: one of each `REPRESENTATIVE_KERNELS` kind found (the middle
    match), then the rest in order."""
    chosen: list[str] = []
    for _, pattern in REPRESENTATIVE_KERNELS:
        hits = [x for x in names if re.search(pattern, x) and x not in chosen]
        if hits:
            chosen.append(hits[len(hits) // 2])
    chosen += [x for x in names if x not in chosen]
    return chosen[:n]


def level_stats(u: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(share of exact zeros in `w`, mean distance of the other weights to the nearest level in
    steps) of `u = level_units(w, ...)`. The distance is about 0.25 for weights spread evenly
    and 0 on the levels (up to ~|level| * 2^-12 after the float16 storage of model folders)."""
    nz = u[w != 0]
    dist = float(np.mean(np.abs(nz - np.round(nz)))) if nz.size else 0.0
    return float(np.mean(w == 0)), dist


def plot_weight_histograms(
    before_params,
    after_params,
    bits: int,
    out: str | Path,
    layers: list[str] | None = None,
    labels: tuple[str, str] = ("before", "after"),
    bin_width: float = 0.05,
) -> Path:
    """Writes a PNG: per kernel (one row each), the histograms of two models' weights in units
    of their own per-output-channel `bits`-bit step (`level_units`; x from -(qmax+1) to
    qmax+1, `bin_width` steps a bin, integer levels marked, y log counts), `labels[0]` filled,
    `labels[1]` outlined. Exact zeros are left out of the histograms and given as a share in
    each panel, with the mean distance of the other weights to their nearest level
    (`level_stats`).

    `before_params`, `after_params`: parameter trees (or variables dicts) of the same
    architecture, e.g. a float model and its quantized or quantization-aware fine-tuned copy.
    `layers`: layer names as `asr.models.quant.kernel_table` gives them (default: up to 4
    representative ones, `representative_layers`). Returns `out`.
    """
    if (
        isinstance(bits, bool)
        or not isinstance(bits, (int, np.integer))
        or not 2 <= bits <= MAX_BITS
    ):
        raise ValueError(f"bits must be an integer in [2, {MAX_BITS}], got {bits!r}")
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width!r}")
    tables = [dict(kernel_table(before_params)), dict(kernel_table(after_params))]
    for table, label in zip(tables, labels, strict=True):
        if not table:
            raise ValueError(f"{label}: no kernels in this parameter tree")
    common = [n for n in tables[0] if n in tables[1]]
    if layers is None:
        layers = representative_layers(common)
        if not layers:
            raise ValueError(f"{labels[0]} and {labels[1]} share no kernel (different models?)")
    for name in layers:
        for table, label in zip(tables, labels, strict=True):
            if name not in table:
                known = ", ".join(list(table)[:8]) + (" ..." if len(table) > 8 else "")
                raise ValueError(f"{label}: no kernel named {name!r} (kernels: {known})")
        shapes = [np.shape(t[name]) for t in tables]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"{name}: {labels[0]} has shape {shapes[0]}, {labels[1]} {shapes[1]}; the two "
                "models must share an architecture"
            )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = qmax(bits)
    nbins = int(round(2 * (m + 1) / bin_width)) + 1  # integer levels at bin centres
    edges = np.linspace(-(m + 1) - bin_width / 2, m + 1 + bin_width / 2, nbins + 1)
    fig, axes = plt.subplots(
        len(layers), 1, figsize=(10.0, 0.8 + 2.3 * len(layers)), sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], layers, strict=True):
        shape = np.shape(tables[0][name])
        axes_ = kernel_axes(name, shape)
        notes, top = [], 1
        for k, (table, label) in enumerate(zip(tables, labels, strict=True)):
            w = np.asarray(table[name], np.float32)
            u = level_units(w, bits, axes_)
            counts, _ = np.histogram(u[w != 0], bins=edges)
            top = max(top, int(counts.max(initial=0)))
            if k == 0:
                ax.stairs(counts, edges, fill=True, alpha=0.45, color="tab:blue", label=label)
            else:
                ax.stairs(counts, edges, color="tab:red", lw=1.1 if m < 32 else 0.6, label=label)
            zeros, dist = level_stats(u, w)
            notes.append(f"{label}: zeros {100 * zeros:.1f}%, mean distance to a level {dist:.3f}")
        ax.vlines(
            np.arange(-m, m + 1),
            0,
            1,
            transform=ax.get_xaxis_transform(),
            colors="0.6",
            lw=0.5 if m < 32 else 0.25,
            zorder=0,
        )
        ax.set_yscale("log")
        ax.set_ylim(0.7, top * 40)  # headroom for the notes
        n_channels = int(np.prod([shape[a] for a in range(len(shape)) if a not in axes_]))
        ax.set_title(f"{name}  {tuple(shape)}, {n_channels} output channels", fontsize=9)
        ax.set_ylabel("weights / bin")
        ax.annotate(
            "\n".join(notes),
            xy=(0.99, 0.96),
            xycoords="axes fraction",
            ha="right",
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.8", "alpha": 0.85},
        )
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[-1, 0].set(xlim=(edges[0], edges[-1]), xlabel=f"weight / step ({bits}-bit levels)")
    fig.suptitle(
        f"weights in units of their {bits}-bit step (per output channel; levels -{m}..{m}, "
        f"{bin_width:g}-step bins, exact zeros counted apart)",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, out)
