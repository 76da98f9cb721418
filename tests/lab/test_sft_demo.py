"""The SFT demo's config and report, without training (the stage itself runs in `make demo-sft`)."""
import json

import numpy as np
import pytest

from ramm_lab.sft import SFTDemoConfig, SFTEvalConfig, _pick, _save_pictures, write_report


def test_the_shipped_config_loads_and_a_misspelt_key_is_named(tmp_path):
    cfg = SFTDemoConfig.load("configs/demo-sft.json")
    assert cfg.sft.trainer.max_minutes and cfg.evaluation.shown >= 16 and len(cfg.evaluation.seeds) >= 2
    (tmp_path / "bad.json").write_text(json.dumps({"evaluation": {"casez": 3}}))
    with pytest.raises(ValueError, match="casez"):
        SFTDemoConfig.load(tmp_path / "bad.json")


def test_the_shipped_config_decodes_as_before_its_settings_became_a_decode_config():
    from ramm.config import DecodeConfig

    e = SFTDemoConfig.load("configs/demo-sft.json").evaluation  # before: top_p 0.9, task_top_p {segment: 0.3}
    assert [e.decoding(t) for t in ("edit", "style", "segment", "controlled")] == \
        [DecodeConfig(top_p=0.9), DecodeConfig(top_p=0.9), DecodeConfig(top_p=0.3), DecodeConfig(top_p=0.9)]
    with pytest.raises(ValueError, match="image.method must be sample or greedy"):
        SFTEvalConfig(image=DecodeConfig(method="cfg"))


def test_cases_are_a_fixed_subset_and_the_report_shows_every_picture(tmp_path):
    rows = [(f"a{i}", f"b{i}", {}) for i in range(50)]
    assert _pick(rows, 5) == _pick(list(reversed(rows)), 5) and len(set(map(str, _pick(rows, 5)))) == 5
    img = np.zeros((8, 8, 3), np.uint8)
    _save_pictures({"edit": [(img, "make it dark", img, img)] * 3, "vqa_tone": [(img, "tone?", "dark", "dark")]},
                   tmp_path / "evaluate")
    md = write_report(SFTDemoConfig(), {"cases": 3, "seeds": [0], "edit": {"sft_recognised": 0.5},
                                        "vqa_tone": {"sft_accuracy": 1.0}}, tmp_path).read_text()
    assert "![edit](evaluate/edit.png)" in md and "| sft_recognised | 0.500 |" in md and "| 0 | tone? | dark | dark |" in md
    assert (tmp_path / "evaluate" / "edit.png").is_file() and md.count("make it dark") == 3
