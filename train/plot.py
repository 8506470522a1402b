"""Training curves: loss and dev WER against step, from a work folder's metrics.jsonl.

`python -m train.plot WORKDIR [--out PNG]` writes WORKDIR/curves.png (matplotlib, a dev extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training lines, dev-WER lines) of a metrics.jsonl."""
    train, dev = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            (dev if "dev_wer" in m else train).append(m)
    if not train:
        raise ValueError(f"{path}: no training metrics yet")
    return train, dev


def plot_curves(workdir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    train, dev = read_metrics(workdir / "metrics.jsonl")
    out = Path(out) if out else workdir / "curves.png"
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot([m["step"] for m in train], [m["loss"] for m in train])
    ax[0].set(
        xlabel="step",
        ylabel="training loss (nats / utterance, CTC term included)",
        yscale="log",
        title="training loss",
    )
    if dev:
        ax[1].plot([m["step"] for m in dev], [100 * m["dev_wer"] for m in dev], marker="o")
    ax[1].set(xlabel="step", ylabel="WER %", title="dev WER (beam search, as asr eval)")
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle(workdir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    print(plot_curves(args.workdir, args.out))


if __name__ == "__main__":
    main()
