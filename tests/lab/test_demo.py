"""The demo configs are valid, and `make demo-tiny`'s pipeline runs end to end (slow)."""
import json
from pathlib import Path

import pytest

from ramm_lab.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("demo*.json") if p.name != "demo-sft.json")  # test_sft_demo.py


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_demo_config_sections_build_their_recipe_configs(path, tmp_path):
    from ramm.config import GeneratorConfig, RAConfig, RetrieverRecipeConfig, TrainerConfig
    from ramm_lab.evaluation_network import EvaluatorConfig
    from ramm.retrieval.dual_encoder import DualEncoderConfig
    from ramm.tokenizers.image_tokenizer import ImageTokenizerConfig

    cfg = DemoConfig.load(path)
    assert isinstance(cfg.tokenizer.model, ImageTokenizerConfig) and isinstance(cfg.tokenizer.trainer, TrainerConfig)
    assert isinstance(cfg.retriever.model, DualEncoderConfig) and isinstance(cfg.retriever.trainer, TrainerConfig)
    assert isinstance(cfg.retriever.recipe, RetrieverRecipeConfig)
    assert isinstance(cfg.generator, GeneratorConfig) and isinstance(cfg.generator.ra, RAConfig)
    assert set(cfg.evaluation.splits) <= {"val", "test", "heldout"}
    assert isinstance(cfg.evaluator, EvaluatorConfig) and cfg.evaluator.steps <= 2000


def test_demo_config_rejects_unknown_keys_and_bad_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "generatr": {}}))
    with pytest.raises(ValueError, match="unknown field generatr"):
        DemoConfig.load(bad)
    bad.write_text(json.dumps({"generator": {"trainer": {"stepz": 3}}}))
    with pytest.raises(ValueError, match=r"bad\.json: unknown field generator\.trainer\.stepz"):
        DemoConfig.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DemoConfig.load(bad)
    with pytest.raises(ValueError, match="must not set"):
        DemoConfig(generator={"retrieval": False})
    with pytest.raises(FileNotFoundError):
        DemoConfig.load(tmp_path / "missing.json")


def _tiny_with_fewer_steps(tmp_path) -> Path:
    """configs/demo-tiny.json with each training stage's steps cut to a third. Every stage, the corpus, the
    evaluation and its sizes stay demo-tiny's, and the test asserts nothing about what training reached
    (demo-tiny is 'toy budgets: checks the pipeline, not the claim'); test_demo_config pins the file itself."""
    d = json.loads((ROOT / "configs" / "demo-tiny.json").read_text())
    for section in (d["tokenizer"]["trainer"], d["retriever"]["trainer"], d["generator"]["trainer"]):
        section["steps"] = 10  # from 30, still past log_every and every warmup
    d["evaluator"]["steps"] = 20  # from 60 (refresh 20: one class-vector refresh instead of three)
    path = tmp_path / "demo-tiny-fewer-steps.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.slow
def test_demo_tiny_runs_end_to_end_and_caches_stages(emojibench_dir, tmp_path, torch_on_every_core):
    from ramm.pipeline import RAMM
    from ramm_lab.demo import run_demo
    from ramm_lab.report import load_results

    cfg = DemoConfig.load(_tiny_with_fewer_steps(tmp_path))
    lines: list[str] = []
    md = run_demo(cfg, emojibench_dir, tmp_path / "run", report=lines.append)
    assert md.exists() and md.with_suffix(".html").exists()
    results, examples = load_results(tmp_path / "run")
    for split in cfg.evaluation.splits:
        assert set(results.scores[split]) == {"RA", "vanilla", "retrieval-only", "retrieval-only (tokenized)"}
        for s in results.scores[split].values():
            assert s.n == cfg.evaluation.limit and s.fid is not None and 0 <= s.recognition <= 1
            assert s.fid_retriever is not None and 0 <= s.recognition_retriever <= 1  # the old measures, once
    assert results.fid_features == "FID on ramm-evaluator features"
    n = cfg.evaluation.train_probe
    assert {f"{s}: the tokenizer's reconstruction of the references" for s in cfg.evaluation.splits} == set(results.ceilings)
    held = min(n, cfg.evaluation.limit)
    assert {f"train ({n} documents, trained on): RA, own document retrieved",
            f"train ({n} documents, trained on): vanilla",
            f"heldout ({held} documents) with their own document ALLOWED in the memory (not the protocol): "
            "RA, own document retrieved"} == set(results.memory_holds)
    assert all(0 <= v <= 1 for rows in (results.ceilings, results.memory_holds) for row in rows.values()
               for v in row.values())
    assert examples and all((tmp_path / "run" / e.reference).exists() for e in examples)
    for bundle in ("generator_ra", "generator_vanilla"):  # the bundles decode as the demo evaluated them
        decode = RAMM.load(tmp_path / "run" / bundle, device="cpu").decode
        assert (decode.image, decode.caption) == (cfg.evaluation.image, cfg.evaluation.caption)
    # a second run recomputes nothing
    lines.clear()
    run_demo(cfg, emojibench_dir, tmp_path / "run", report=lines.append)
    assert all("cached" in ln for ln in lines if ln.startswith("[") and not ln.startswith("[demo]"))


def test_train_probe_takes_half_flags_and_never_more_than_asked():
    from ramm.corpus.document import Document, TextSegment
    from ramm_lab.headline import train_probe

    docs = [Document(id=f"d{i}", segments=[TextSegment(f"t{i}")], metadata={"category": "Flags" if i < 3 else "Smileys"})
            for i in range(10)]
    flags = lambda ds: sum(d.metadata["category"] == "Flags" for d in ds)
    assert train_probe(docs, 0) == []
    one = train_probe(docs, 1)  # no flag share at n = 1: one other document, not every flag
    assert len(one) == 1 and flags(one) == 0
    four = train_probe(docs, 4)
    assert len(four) == 4 and flags(four) == 2
    eight = train_probe(docs, 8)  # only 3 flags: the rest are others
    assert len(eight) == 8 and flags(eight) == 3 and len({d.id for d in eight}) == 8
    assert train_probe(docs, 4) == four  # fixed
