"""The edge benchmark (hw/benchmarks/edge.py) end to end on a small random model: every section
runs, its rows carry what the README's tables need, the emulator agrees with the fake-quant
model, and zero skipping shows in the modeled MAC cycles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from test_hw_runtime import _loaded

from asr.model_io import save_model_folder
from hw.benchmarks.edge import main


def test_edge_benchmark_sections(tmp_path, capsys):
    lm = _loaded("lstm")
    folder = save_model_folder(tmp_path / "m", lm.config, lm.tokenizer, lm.variables)
    rng = np.random.default_rng(0)
    rows = []
    for i, n in enumerate((9000, 14000)):
        path = tmp_path / f"{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)
        rows.append({"audio": str(path), "text": "turn on the lights"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.jsonl"
    argv = ["--model", str(folder), "--set", f"x={manifest}", "--bits", "8", "--sparsity", "0",
            "0.5", "--cost-utterances", "1", "--speed-utterances", "2", "--repeats", "1",
            "--beam", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "% of large float32" in table and "identical" in table and "RTF" in table
    got = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [r["what"] for r in got]
    assert kinds.count("size") == 2 and kinds.count("equiv") == 1 and kinds.count("cost") == 2
    assert kinds.count("speed") == 2
    size = {r["sparsity"]: r for r in got if r["what"] == "size"}
    assert size[0.5]["bytes"] < size[0.0]["bytes"] and size[0.5]["zero_fraction"] >= 0.5
    eq = next(r for r in got if r["what"] == "equiv")
    # a random model on noise sits near ties, so only the bookkeeping is checked here (the
    # agreement itself: tests/test_hw_runtime.py, and the README's runs of trained models)
    assert eq["utterances"] == 2 and eq["identical"] in (0.0, 0.5, 1.0)
    assert eq["wer_emulator"] >= 0 and eq["wer_fake_quant"] >= 0
    cost = {r["sparsity"]: r for r in got if r["what"] == "cost"}
    ratio = cost[0.0]["per10ms_mac_cycles"] / cost[0.5]["per10ms_mac_cycles"]
    assert ratio > 1.5, ratio  # attention products (no weights) are not skipped
    assert cost[0.5]["per10ms_bytes_read"] < cost[0.0]["per10ms_bytes_read"]
    assert all(r["rtf"] > 0 for r in got if r["what"] == "speed")
    # the tables and the cost plot again from the saved results, measuring nothing
    png = tmp_path / "cost.png"
    assert main(["--from-results", str(out), "--plot", str(png)]) == 0
    assert capsys.readouterr().out.count("|") > 20 and png.stat().st_size > 10_000


def test_stream_cost_charges_every_step(tmp_path):
    """`--cost-part stream`: the encoder step by step against whole on the same utterance; each
    step decodes every encoder kernel once, so weights decoded are the chunks times whole's."""
    from hw.benchmarks.edge import artifacts, run_cost, stream_inputs

    lm = _loaded("lstm")
    audio = (0.1 * np.random.default_rng(1).standard_normal(9000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", audio, 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(tmp_path / "a.wav"), "text": "stop"}) + "\n")
    arts = artifacts(lm, [8], [0.0])
    rows = {r["part"]: r for r in run_cost(arts, {"x": str(manifest)}, 1, "tiny", 2, "stream")}
    chunks = len(stream_inputs(lm.config, audio)[0])
    assert chunks > 2, chunks
    stream, whole = rows["stream"], rows["whole"]
    decoded = stream["per10ms_weights_decoded"] / whole["per10ms_weights_decoded"]
    assert decoded == pytest.approx(chunks, rel=1e-6), (decoded, chunks)
    assert (
        stream["per10ms_float_macs"] == 0
        and stream["per10ms_bytes_read"] > whole["per10ms_bytes_read"]
    )
