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
    assert out["encoder_macs_per_second"] > 0 and "expensive_frame_share" not in out
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
    assert "argument --beam-symbols: must be >= 1, got 0" in capsys.readouterr().err


def test_eval_by_field_and_details(model_dir, audio, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    spk = ["ann", "bob", "ann"]
    m.write_text(
        "".join(
            json.dumps({"audio": str(a), "text": "call mom", "speaker": s}) + "\n"
            for a, s in zip(audio, spk, strict=True)
        )
    )
    det = tmp_path / "not" / "yet" / "det.jsonl"  # folders made as needed
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


def test_eval_leaves_out_unreadable_rows_and_says_so(model_dir, audio, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    (tmp_path / "noise.wav").write_bytes(b"not audio at all")
    paths = [*map(str, audio), str(tmp_path / "missing.wav"), str(tmp_path / "noise.wav")]
    m.write_text("".join(json.dumps({"audio": p, "text": "go"}) + "\n" for p in paths))
    args = ["eval", "--model", str(model_dir), "--manifest", str(m)]
    assert main([*args, "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["utterances"] == 3 and out["unreadable"] == 2
    assert [r["audio"] for r in out["unreadable_rows"]] == paths[3:]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "over 3 utterances" in cap.out
    warning = [ln for ln in cap.err.splitlines() if "unreadable" in ln]
    assert len(warning) == 1 and "2 of 5" in warning[0] and "missing.wav" in warning[0], cap.err
    assert "--json" in warning[0]
    assert main([*args, "--fail-on-unreadable"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asr eval: error:") and "missing.wav" in err


def _fake_eval(monkeypatch, result: dict):
    """`asr eval` with the recognizer and evaluation replaced by a canned result."""
    import asr.cli
    import asr.recognizer

    seen = {}

    def evaluate(rec, rows, **kw):
        seen.update(kw, rows=rows)
        return dict(result)

    from types import SimpleNamespace

    from asr.models.quant import QuantPolicy

    fake = SimpleNamespace(loaded=SimpleNamespace(model=SimpleNamespace(quant=QuantPolicy())))
    monkeypatch.setattr(asr.cli, "_recognizer", lambda args: fake)
    monkeypatch.setattr(asr.recognizer, "evaluate_manifest", evaluate)
    return seen


BASE = {"rtf": 0.01, "device": "cpu", "utterances": 2, "unreadable": 0, "unreadable_rows": []}


def test_eval_keyword_only_manifest_prints_recall(monkeypatch, tmp_path, capsys):
    m = tmp_path / "k.jsonl"
    m.write_text(
        "".join(json.dumps({"audio": f"{i}.wav", "keywords": ["lights"]}) + "\n" for i in range(2))
    )
    res = {**BASE, "wer": None, "words": 0, "keyword_recall": 0.5, "keyword_rows": 2}
    res |= {"keywords": 2, "keywords_found": 1}
    seen = _fake_eval(monkeypatch, res)
    assert main(["eval", "--manifest", str(m)]) == 0
    out = capsys.readouterr().out
    assert "keyword recall 50.0% over 2 utterances" in out and "WER" not in out
    assert seen["unreadable"] == "skip"
    res = {**res, "utterances": 3, "wer": 0.25, "words": 4}  # mixed: both lines
    _fake_eval(monkeypatch, res)
    assert main(["eval", "--manifest", str(m)]) == 0
    out = capsys.readouterr().out
    assert "WER 25.00% over 1 utterances (4 words)" in out and "keyword recall 50.0%" in out
    seen = _fake_eval(monkeypatch, res)
    assert main(["eval", "--manifest", str(m), "--fail-on-unreadable", "--limit", "1"]) == 0
    assert seen["unreadable"] == "fail" and len(seen["rows"]) == 1
    capsys.readouterr()
    # an older evaluate_manifest without the keyword and unreadable keys still prints
    _fake_eval(monkeypatch, {"rtf": 0.01, "device": "cpu", "utterances": 2, "wer": 0.0, "words": 3})
    assert main(["eval", "--manifest", str(m)]) == 0
    assert "WER 0.00% over 2 utterances (3 words)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--nbest", "0"], "argument --nbest: must be >= 1, got 0"),
        (["--nbest", "-2"], "argument --nbest: must be >= 1, got -2"),
        (["--nbest", "5"], "argument --nbest: 5 is more than --beam 4"),
        (["--nbest", "3", "--beam", "2"], "argument --nbest: 3 is more than --beam 2"),
        (["--nbest", "2", "--method", "greedy"], "argument --nbest: 2 needs --method beam"),
        (["--beam", "0"], "argument --beam: must be >= 1, got 0"),
        (["--beam-symbols", "-1"], "argument --beam-symbols: must be >= 1, got -1"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["--batch-size", "two"], "argument --batch-size: must be an integer, got 'two'"),
    ],
)
def test_transcribe_argument_errors(flags, msg, capsys):
    assert main(["transcribe", *flags, "x.wav"]) == 2
    err = capsys.readouterr().err
    assert f"asr transcribe: error: {msg}" in err, err


def test_eval_argument_errors_and_nbest_help(capsys):
    assert main(["eval", "--manifest", "m.jsonl", "--limit", "-1"]) == 2
    assert "asr eval: error: argument --limit: must be >= 0, got -1" in capsys.readouterr().err
    assert main(["transcribe", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--nbest K" in out and "(default 1" in out


def test_details_path_that_is_a_folder_fails_before_decoding(monkeypatch, tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio": "a.wav", "text": "x"}) + "\n")
    seen = _fake_eval(monkeypatch, {**BASE, "wer": 0.0, "words": 1})
    assert main(["eval", "--manifest", str(m), "--details", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--details {tmp_path}: is a folder" in err and not seen


def test_unexpected_errors_are_one_line(monkeypatch, tmp_path, capsys):
    import asr.model_io

    def boom(*a, **k):
        raise RuntimeError("device fell over\nsecond line")

    monkeypatch.setattr(asr.model_io, "load_model", boom)
    assert main(["transcribe", "some.wav"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "asr transcribe: error: RuntimeError: device fell over second line "
        "(input: some.wav; asr --debug shows the traceback)"
    ], err
    assert main(["--debug", "transcribe", "some.wav"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "device fell over" in err
    assert main(["transcribe", "--debug", "some.wav"]) == 1  # also after the command
    assert "Traceback" in capsys.readouterr().err

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(asr.model_io, "load_model", interrupt)
    assert main(["transcribe", "some.wav"]) == 130


def test_unexpected_errors_in_entry_point_commands(monkeypatch, tmp_path, capsys):
    import train.cli

    def broken(args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train.cli, "cmd_train", broken)
    m = tmp_path / "m.jsonl"
    args = ["train", "--data", str(m), "--workdir", str(tmp_path / "w")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"asr train: error: OSError: [Errno 28] No space left on device "
        f"(input: {m}; asr --debug shows the traceback)"
    ], err
    assert main(["--debug", *args]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_broken_plugin_command_does_not_break_the_others(monkeypatch, capsys):
    import asr.cli

    class Broken:
        name, value = "shiny", "shiny.cli:add"

        def load(self):
            raise ImportError("No module named 'shiny'")

    monkeypatch.setattr(asr.cli, "entry_points", lambda group: [Broken()])
    assert main(["transcribe", "--help"]) == 0
    cap = capsys.readouterr()
    assert "usage: asr transcribe" in cap.out
    assert "asr: warning: subcommand 'shiny' (shiny.cli:add) not available: ImportError" in cap.err


def test_context_flags(model_dir, audio, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("call mom\nthe lights\t2\n")
    args = ["transcribe", "--model", str(model_dir), "--json", str(audio[0])]
    assert main([*args, "--context", str(names), "--context-boost", "30"]) == 0
    boosted = json.loads(capsys.readouterr().out)["text"]
    assert "call mom" in boosted or "the lights" in boosted, boosted
    assert main([*args, "--no-context"]) == 0
    capsys.readouterr()
    # eval: rows' lists mark the words context_wer scores, with or without biasing
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio": str(audio[0]), "text": "call mom", "context": ["mom"]}))
    for extra in ([], ["--no-context"]):
        assert (
            main(["eval", "--model", str(model_dir), "--manifest", str(m), "--json", *extra]) == 0
        )
        out = json.loads(capsys.readouterr().out)
        assert out["context_words"] == 1 and out["context_used"] == (not extra)
        assert out["decode"]["context_lm_weight"] == 0.0  # DecodeSettings' default
    evaluated = ["eval", "--model", str(model_dir), "--manifest", str(m), "--json"]
    assert main([*evaluated, "--context-lm-weight", "0.25"]) == 0
    assert json.loads(capsys.readouterr().out)["decode"]["context_lm_weight"] == 0.25
    assert main(["eval", "--model", str(model_dir), "--manifest", str(m)]) == 0
    assert "context WER" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--context-boost", "-1"], "argument --context-boost: must be a finite number >= 0.0"),
        (["--context-boost", "inf"], "argument --context-boost: must be a finite number >= 0.0"),
        (["--context", "n.txt", "--no-context"], "not allowed with argument"),
        (["--context-lm-weight", "-0.1"], "argument --context-lm-weight: must be a finite number"),
    ],
)
def test_context_argument_errors(flags, msg, capsys):
    assert main(["transcribe", *flags, "x.wav"]) == 2
    assert msg in capsys.readouterr().err


def test_bad_context_file_and_plot_without_biasing_network(model_dir, audio, tmp_path, capsys):
    bad = tmp_path / "names.txt"
    bad.write_text("anna\tmany\n")
    assert (
        main(["transcribe", "--model", str(model_dir), "--context", str(bad), str(audio[0])]) == 2
    )
    assert "names.txt:1: weight after the tab must be a number" in capsys.readouterr().err
    good = tmp_path / "good.txt"
    good.write_text("anna\n")
    argv = ["plot", "attention", "--model", str(model_dir), "--audio", str(audio[0])]
    assert main([*argv, "--context", str(good), "-o", str(tmp_path / "a.png")]) == 2
    assert "has no attention biasing network" in capsys.readouterr().err
    argv = ["plot", "branches", "--model", str(model_dir), "--audio", str(audio[0])]
    assert main([*argv, "-o", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "asr plot: error: --model" in err and "has no branching encoder" in err
    assert "--set encoder=branching" in err and not (tmp_path / "b.png").exists()


def test_plot_attention_writes_a_png(audio, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    tok = Tokenizer.train(["turn on the lights", "call mom", "stop", "go"] * 20, vocab_size=24)
    cfg = get_config("tiny").replace(vocab_size=tok.vocab_size, bias_dim=16, bias_heads=2)
    variables = init_variables(build_model(cfg), jax.random.PRNGKey(0))
    mdir = save_model_folder(tmp_path / "bias", cfg, tok, jax.device_get(variables))
    names = tmp_path / "names.txt"
    names.write_text("mom\nthe lights\n")
    out = tmp_path / "att.png"
    argv = ["plot", "attention", "--model", str(mdir), "--audio", str(audio[0])]
    assert main([*argv, "--context", str(names), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
