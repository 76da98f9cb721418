"""Training commands take their flags and `--config FILE` from the config dataclasses (jsonargparse)."""
import json

import pytest

from ramm.__main__ import main
from ramm.cli import parse_config
from ramm.config import GeneratorConfig, GraceConfig, load_config, save_config


def test_flags_and_config_file_fill_the_nested_config(tmp_path):
    f = tmp_path / "gen.json"
    f.write_text(json.dumps({"corpus": "c", "trainer": {"steps": 7}, "ra": {"alpha": 0.2}}))
    cfg, threads = parse_config(GeneratorConfig, ["--config", str(f), "--trainer.batch-size", "4", "--out", "o",
                                                  "--threads", "2"], "ramm train generator", "")
    assert (cfg.corpus, cfg.out, threads) == ("c", "o", 2)
    assert (cfg.trainer.steps, cfg.trainer.batch_size, cfg.ra.alpha) == (7, 4, 0.2)
    default = GeneratorConfig()
    assert cfg.trainer.lr == default.trainer.lr and cfg.ra.mmr == default.ra.mmr  # the generator's own defaults


def test_a_mistyped_field_in_a_config_file_names_the_field_and_the_file(tmp_path, capsys):
    f = tmp_path / "typo.json"
    f.write_text(json.dumps({"corpus": "c", "out": "o", "trainer": {"stepz": 3}}))
    assert main(["train", "grace", "--config", str(f)]) == 1
    err = capsys.readouterr().err
    assert "trainer.stepz" in err and "typo.json" in err


def test_bad_values_are_a_clear_error(capsys):
    assert main(["train", "grace", "--corpus", "c", "--out", "o", "--scheme", "bogus"]) == 1
    assert "scheme" in capsys.readouterr().err


def test_saved_config_loads_back(tmp_path):
    cfg = GraceConfig(corpus="c", out="o", memorize_splits=("train",))
    save_config(cfg, tmp_path / "grace_config.json")
    assert load_config(GraceConfig, tmp_path / "grace_config.json") == cfg


def test_help_comes_from_the_field_comments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "generator", "--help"])
    out = capsys.readouterr().out
    assert "--trainer.warmup_steps" in out and "linear warmup steps" in out and "EmojiBench" not in out
