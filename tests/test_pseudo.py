"""Pseudo-labels: the teacher's hypothesis becomes the transcript; keyword rows need a
hypothesis that contains every keyword."""

import pytest

from asr.manifest import check_rows, read_manifest
from asr.model_io import load_model
from asr.text import normalize_text
from train.pseudo import pseudo_label


@pytest.fixture(scope="module")
def teacher():
    return load_model("default")


def test_pseudo_labels_are_the_teachers_hypotheses(corpus, teacher):
    rows = read_manifest(corpus)[:6]
    untranscribed = [{k: v for k, v in r.items() if k != "text"} for r in rows]
    # weak labels: a keyword the speaker said, and one nobody said
    untranscribed[0]["keywords"] = ["lights"]
    untranscribed[1]["keywords"] = ["cappuccino"]
    out, counts = pseudo_label(teacher, untranscribed, nbest=4, beam=4)
    assert counts["rows"] == 6 and counts["no_keyword_match"] == 1
    # an empty best hypothesis is no label either (the shipped model hears nothing in one)
    assert counts["labelled"] == len(out) == 5 - counts["empty"] >= 3
    by_audio = {r["audio"]: r for r in rows}
    order = [r["audio"] for r in rows]
    assert [order.index(o["audio"]) for o in out] == sorted(order.index(o["audio"]) for o in out)
    assert out[0]["audio"] == rows[0]["audio"] and "lights" in out[0]["text"].split()
    # the shipped model transcribes these clear eSpeak NG phrases: most labels are right
    right = sum(
        normalize_text(o["text"]) == normalize_text(by_audio[o["audio"]]["text"]) for o in out
    )
    assert right >= 3
    for o in out:
        assert o["pseudo_label"]["model"] == teacher.source and 0 <= o["pseudo_label"]["rank"] < 4
    good, problems = check_rows(out)
    assert not problems and len(good) == len(out)


def test_low_scoring_labels_can_be_left_out_and_bad_arguments_are_refused(corpus, teacher):
    rows = [{k: v for k, v in r.items() if k != "text"} for r in read_manifest(corpus)[:3]]
    out, counts = pseudo_label(teacher, rows, nbest=1, beam=2, min_score_per_second=0.0)
    assert out == [] and counts["low_score"] == 3  # log-probabilities are below 0
    with pytest.raises(ValueError, match="nbest"):
        pseudo_label(teacher, rows, nbest=3, beam=2)
    with pytest.raises(ValueError, match="nothing to label"):
        pseudo_label(teacher, [])


def test_pseudo_label_command_labels_a_folder_or_a_keyword_manifest(corpus, tmp_path, capsys):
    import shutil

    from asr.cli import main
    from asr.manifest import write_manifest

    folder = tmp_path / "untranscribed" / "day1"
    folder.mkdir(parents=True)
    rows = read_manifest(corpus)[:3]
    for r in rows:
        shutil.copy(r["audio"], folder)
    out = tmp_path / "labelled.jsonl"
    args = ["corpus", "pseudo-label", str(tmp_path / "untranscribed"), "--out", str(out)]
    assert main(args + ["--nbest", "2", "--beam", "2"]) == 0
    said = capsys.readouterr().out
    assert "rows 3" in said and "labelled" in said
    labelled = read_manifest(out)
    assert labelled and all(r["text"] and r["pseudo_label"]["rank"] < 2 for r in labelled)
    # a manifest with keywords: only hypotheses containing them
    kw = write_manifest(
        [{"audio": r["audio"], "keywords": ["zebra"]} for r in rows], tmp_path / "kw.jsonl"
    )
    assert main(["corpus", "pseudo-label", str(kw), "--out", str(tmp_path / "none.jsonl")]) == 0
    assert "no_keyword_match 3" in capsys.readouterr().out
    bad = ["corpus", "pseudo-label", str(kw), "--out", str(out), "--nbest", "3", "--beam", "2"]
    assert main(bad) != 0
    assert "nbest" in capsys.readouterr().err
