"""The `asr` command: transcribe, eval, errors; model folders load and damaged ones fail clearly."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.model_io import ModelLoadError, load_model, save_model_folder
from asr.models import build_model, get_config
from asr.models.transducer import init_variables
from asr.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = Tokenizer.train(["turn on the lights", "call mom", "stop", "go"] * 20, vocab_size=24)
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size)
    variables = init_variables(build_model(cfg), jax.random.PRNGKey(0))
    return save_model_folder(
        tmp_path_factory.mktemp("m") / "model", cfg, tok, jax.device_get(variables)
    )


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    paths = []
    for i, (n, sr) in enumerate([(16000, 16000), (4000, 8000), (30000, 22050)]):
        p = d / f"{i}.{'flac' if i else 'wav'}"
        sf.write(p, (0.1 * rng.standard_normal(n)).astype(np.float32), sr)
        paths.append(p)
    return paths


def test_transcribe_one_line_per_file(model_dir, audio, capsys):
    assert main(["transcribe", "--model", str(model_dir), *map(str, audio)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(audio)


def test_transcribe_nbest_and_json(model_dir, audio, capsys):
    assert main(["transcribe", "--model", str(model_dir), "--nbest", "2", str(audio[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 1 <= len(lines) <= 2 and all(ln.split("\t")[0] == str(audio[0]) for ln in lines)
    scores = [float(ln.split("\t")[2]) for ln in lines]
    assert scores == sorted(scores, reverse=True)
    assert (
        main(
            [
                "transcribe",
                "--model",
                str(model_dir),
                "--json",
                "--method",
                "greedy",
                *map(str, audio),
            ]
        )
        == 0
    )
    objs = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [o["audio"] for o in objs] == list(map(str, audio))
    assert all("text" in o and "nbest" in o for o in objs)


def test_eval_json_with_relative_paths(model_dir, audio, tmp_path, capsys):
    m = tmp_path / "sub" / "m.jsonl"
    m.parent.mkdir()
    rel = [str(shutil.copy(a, m.parent / a.name)) for a in audio]
    m.write_text(
        "".join(json.dumps({"audio": a.split("/")[-1], "text": "Call Mom!"}) + "\n" for a in rel)
    )
    assert main(["eval", "--model", str(model_dir), "--manifest", str(m), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["utterances"] == 3 and out["unreadable"] == 0
    assert 0 <= out["wer"] and out["rtf"] > 0 and out["decode"]["method"] == "beam"
    assert out["pairs"][0]["ref"] == "call mom"


def test_beam_symbols_flag(model_dir, audio, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps({"audio": str(a), "text": "go"}) + "\n" for a in audio))
    args = ["eval", "--model", str(model_dir), "--manifest", str(m), "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["decode"]["beam_symbols_per_frame"] == 2  # default
    assert main([*args, "--beam-symbols", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decode"]["beam_symbols_per_frame"] == 3 and out["utterances"] == 3
    assert (
        main(["transcribe", "--model", str(model_dir), "--beam-symbols", "2", str(audio[0])]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main([*args, "--beam-symbols", "0"]) == 2
    assert "beam_symbols_per_frame" in capsys.readouterr().err


def test_eval_by_field_and_details(model_dir, audio, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    spk = ["ann", "bob", "ann"]
    m.write_text(
        "".join(
            json.dumps({"audio": str(a), "text": "call mom", "speaker": s}) + "\n"
            for a, s in zip(audio, spk, strict=True)
        )
    )
    det = tmp_path / "det.jsonl"
    args = ["eval", "--model", str(model_dir), "--manifest", str(m), "--by", "speaker"]
    assert main([*args, "--json", "--details", str(det)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = [json.loads(ln) for ln in det.read_text().splitlines()]
    assert [r["speaker"] for r in rows] == spk and all(r["ref"] == "call mom" for r in rows)
    # the per-speaker numbers are the per-utterance ones summed, and add up to the corpus WER
    for s in set(spk):
        mine = [r for r in rows if r["speaker"] == s]
        g = out["by"]["speaker"][s]
        assert g["utterances"] == len(mine) and g["words"] == 2 * len(mine)
        assert g["wer"] == pytest.approx(sum(r["errors"] for r in mine) / g["words"])
    assert sum(r["errors"] for r in rows) / 6 == pytest.approx(out["wer"])
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "WER by speaker" in text and "ann" in text and "bob" in text
    assert main([*args[:-1], "nosuchfield"]) == 2
    assert "no row of" in capsys.readouterr().err


def test_bad_inputs_give_clear_errors(model_dir, audio, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    assert main(["transcribe", "--model", str(model_dir), str(bad), str(audio[0])]) == 1
    cap = capsys.readouterr()
    assert "not a readable audio file" in cap.err and len(cap.out.splitlines()) == 1
    assert main(["transcribe", "--model", str(tmp_path / "nope"), str(audio[0])]) == 2
    assert "no such model folder" in capsys.readouterr().err
    m = tmp_path / "m.jsonl"
    m.write_text("{broken\n")
    assert main(["eval", "--model", str(model_dir), "--manifest", str(m)]) == 2
    assert "m.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_damaged_model_folders(model_dir, tmp_path):
    d = shutil.copytree(model_dir, tmp_path / "d")
    load_model(d)
    (d / "params.msgpack").write_bytes((d / "params.msgpack").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="damaged"):
        load_model(d)
    d = shutil.copytree(model_dir, tmp_path / "e")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["d_model"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not match"):
        load_model(d)
    (d / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="damaged config"):
        load_model(d)


def test_console_script_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "asr.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("transcribe", "eval", "corpus", "train", "demo"):
        assert cmd in out, out
