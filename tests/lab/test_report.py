import json
import re

import numpy as np
import pytest

from ramm.__main__ import main
from ramm.corpus.document import Document
from ramm_lab.report import (Example, Results, Retrieved, SystemScores, headline_table, load_results,
                                    pick_examples, save_image, save_results, write_report)


def fake_run(run_dir):
    """A tiny run: scores for two splits and two example rows with saved images."""
    rng = np.random.default_rng(0)
    img = lambda name: save_image(run_dir, name, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    results = Results(
        run="tiny", fid_features="FID on ramm-encoder features",
        scores={"heldout": {"RA": SystemScores(n=4, fid=0.25, clip_score=31.5, recognition=0.75, cider=1.2, bleu4=0.4),
                            "vanilla": SystemScores(n=4, fid=0.5, clip_score=20.0, recognition=0.0, cider=0.3, bleu4=0.1),
                            "retrieval-only": SystemScores(n=4, fid=0.4, clip_score=28.0, recognition=0.5)},
                "test": {"RA": SystemScores(n=2, fid=0.3), "vanilla": SystemScores(n=2, fid=0.35)}},
        retrieval={"text->image heldout": {"R@1": 0.5, "R@5": 0.9, "R@10": 1.0}},
        notes=["a note | with a pipe"], config={"steps": 3},
        usage={"heldout": {"none": 3.1, "retrieved": 3.05, "own image": 0.5}},
        ceilings={"heldout: tokenizer": {"all": 0.8, "flags": 0.85}, "train: RA": {"all": 0.04}},
        memory_holds={"train: RA, own document retrieved": {"all": 0.9, "variants": 0.75}})
    examples = [Example(doc_id=f"twitter-{i}", split=split, prompt=f"twitter emoji: thing {i}", flag=i == 0,
                        reference=img(f"ref-{i}"),
                        retrieved=[Retrieved(doc_id=f"google-{i}", text=f"google emoji: thing {i}", image=img(f"ret-{i}"),
                                             score=0.9)],
                        samples={"RA": img(f"ra-{i}"), "vanilla": img(f"van-{i}"), "retrieval-only": img(f"ret-{i}")},
                        captions={"RA": f"thing {i}", "vanilla": "other"}, references=[f"Thing {i}", f"thing_{i}"])
                for i, split in enumerate(["heldout", "test"])]
    return results, examples


def test_report_renders_tables_and_images(tmp_path):
    results, examples = fake_run(tmp_path)
    md, page = write_report(tmp_path, results, examples)
    assert md.exists() and page.exists()
    text, doc = md.read_text(), page.read_text()
    assert "FID on ramm-encoder features" in text and "FID on ramm-encoder features" in doc
    assert "| heldout | RA | 4 | 0.2500 | 31.50 | 75.0% | – | 1.200 | 0.400 |" in text
    assert "| heldout | vanilla | -50% | +57% | +75 pts | – | +300% |" in text  # RA halves FID, vanilla recognises nothing
    assert "](report_files/ra-0.png)" in text and "twitter-0 (flag)" in text
    assert "- a note | with a pipe" in text
    assert "| heldout | 3.100 | 3.050 | 0.500 |" in text  # the retrieval-usage table, contexts in given order
    assert "| train: RA | 4.0% | - |" in text and "| heldout: tokenizer | 80.0% | 85.0% |" in text  # ceilings
    assert "| train: RA, own document retrieved | 90.0% | 75.0% |" in text  # asked for what the memory holds
    assert doc.count("<table>") == 8  # headline, comparison, retrieval, usage, memory holds, ceilings, two grids
    grid = text[text.index("## Samples: heldout"):]
    assert grid.index("google emoji: thing 0") < grid.index("(report_files/ra-0.png)") < grid.index("(report_files/ref-0.png)")
    assert "| document: prompt | evidence (retrieved, k) | RA | vanilla | retrieval-only | reference |" in grid
    assert doc.count('<img src="data:image/png;base64,') == 2 * 5  # reference, retrieved, 3 samples per row
    assert "report_files/" not in re.sub(r"<pre>.*?</pre>", "", doc, flags=re.S)  # self-contained
    assert "–" in headline_table(results)  # retrieval-only has no captions


def test_results_round_trip_and_cli_rerenders(tmp_path, capsys):
    results, examples = fake_run(tmp_path)
    save_results(tmp_path, results, examples)
    loaded, loaded_examples = load_results(tmp_path)
    assert loaded == results and loaded_examples == examples
    assert main(["eval", "--run", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| heldout | RA |" in out and str(tmp_path / "report.html") in out
    assert (tmp_path / "report.md").exists()


def test_report_errors_name_the_missing_piece(tmp_path):
    results, examples = fake_run(tmp_path)
    (tmp_path / examples[1].samples["vanilla"]).unlink()
    with pytest.raises(FileNotFoundError, match="van-1.png"):
        write_report(tmp_path, results, examples)
    examples[0].reference = "/etc/passwd"
    with pytest.raises(ValueError, match="twitter-0: image path '/etc/passwd'"):
        write_report(tmp_path, results, examples)
    with pytest.raises(ValueError, match="image name"):
        save_image(tmp_path, "../x", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "results.json").write_text(json.dumps({"schema": 99}))
    with pytest.raises(ValueError, match="schema 99"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="bad example x"):
        write_report(tmp_path, results, [{"doc_id": "x", "bogus": 1}])
    with pytest.raises(ValueError, match="score fid"):
        SystemScores(fid="low")
    assert main(["eval", "--run", str(tmp_path / "none")]) == 1


def test_pick_examples_is_fixed_and_includes_flags():
    docs = [Document.from_pair(f"s-{i}", f"s emoji: {i}", np.zeros((2, 2, 3), np.uint8),
                               metadata={"split": ["test", "heldout", "train"][i % 3],
                                         "category": "Flags" if i % 4 == 0 else "Smileys"}) for i in range(60)]
    picked = pick_examples(docs, per_split=5, flags=3)
    assert [d.metadata["split"] for d in picked] == ["test"] * 5 + ["heldout"] * 5
    assert sum(d.metadata["category"] == "Flags" for d in picked[5:]) >= 3
    assert [d.id for d in pick_examples(list(reversed(docs)), per_split=5, flags=3)] == [d.id for d in picked]
    with pytest.raises(ValueError, match="flags"):
        pick_examples(docs, per_split=2, flags=3)


def test_make_example_saves_every_image_and_renders(tmp_path):
    from ramm_lab.report import make_example
    px = lambda v: np.full((8, 8, 3), v, np.uint8)
    meta = {"split": "heldout", "category": "Flags", "name": "Japan Flag", "short_names": ["flag-jp", "jp"]}
    doc = Document.from_pair("twitter-1f1ef-1f1f5", "twitter emoji: japan flag", px(10), metadata=meta)
    other = Document.from_pair("google-1f1ef-1f1f5", "google emoji: japan flag", px(20))
    ex = make_example(tmp_path, doc, [(other, 0.95)], {"RA": px(30), "vanilla": px(40), "retrieval-only": px(20)},
                      {"RA": "japan flag"})
    assert ex.flag and ex.split == "heldout" and ex.references == ["Japan Flag", "flag-jp", "jp"]
    assert ex.retrieved[0].doc_id == "google-1f1ef-1f1f5" and ex.retrieved[0].score == pytest.approx(0.95)
    assert all((tmp_path / p).is_file() for p in ex.image_paths()) and len(set(ex.image_paths())) == 5
    results = Results(run="one", fid_features="FID on ramm-encoder features")
    md, _ = write_report(tmp_path, results, [ex])
    assert "report_files/twitter-1f1ef-1f1f5-retrieval-only.png" in md.read_text()


def test_eval_group_takes_run_and_subcommands_from_other_modules():
    from ramm.cli import CLI
    from ramm.config import RetrievalEvalConfig
    from ramm_lab.cli.evaluation import register
    from ramm_lab.jobs import ReportJob
    cli = CLI()
    cli.config_command("retrieval", "recall of a retriever", RetrievalEvalConfig, "retrieval", group="eval")
    register(cli)  # the lab's commands come after the library's (ramm.cli.build_cli)
    assert cli.parse(["eval", "--run", "runs/x"])[1] == ReportJob(run="runs/x")
    command, job, _ = cli.parse(["eval", "retrieval", "--memory", "m", "--corpus", "c"])
    assert command.run == "retrieval" and job.memory == "m"
    assert cli.parse(["eval"])[0] is None  # the bare group: its help
