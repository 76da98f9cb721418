"""The CLI takes corpus-specific defaults from the corpus' hooks: a plain corpus has no answer key, so
`ramm eval retrieval` asks for one by name instead of reporting a recall that cannot be above 0."""
import json

from ramm.__main__ import main


def test_eval_retrieval_on_a_plain_corpus_asks_for_match(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a"}) + "\n")
    assert main(["eval", "retrieval", "--memory", str(tmp_path / "m"), "--corpus", str(tmp_path / "c.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no metadata key" in err and "--match KEY" in err
