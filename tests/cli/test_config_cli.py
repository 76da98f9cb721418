"""Training commands take their flags and `--config FILE` from the config dataclasses (jsonargparse)."""
import json
import re

import pytest

from ramm.__main__ import main
from ramm.cli import build_cli
from ramm.config import GeneratorConfig, GraceConfig, load_config, save_config


def test_flags_and_config_file_fill_the_nested_config(tmp_path):
    f = tmp_path / "gen.json"
    f.write_text(json.dumps({"corpus": "c", "trainer": {"steps": 7}, "ra": {"alpha": 0.2}}))
    _, cfg, threads = build_cli().parse(["train", "generator", "--config", str(f), "--trainer.batch-size", "4",
                                         "--out", "o", "--threads", "2"])
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
    cfg = GraceConfig(corpus="c", out="o", init="g", memorize_splits=("train",))
    save_config(cfg, tmp_path / "grace_config.json")
    assert load_config(GraceConfig, tmp_path / "grace_config.json") == cfg


def test_help_comes_from_the_field_comments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "generator", "--help"])
    out = capsys.readouterr().out
    assert "--trainer.warmup_steps" in out and "linear warmup steps" in out and "EmojiBench" not in out


@pytest.mark.parametrize("command", [["train", "generator"], ["memory", "build"], ["generate", "image"]])
def test_help_groups_are_titled_by_the_field_and_its_class_docstring(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert "<class '" not in out
    titles = [line for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert {"train": "GeneratorConfig: The RA-CM3 generator", "memory": "MemoryBuildConfig: `ramm memory build`",
            "generate": "GenerateImageConfig: `ramm generate image CAPTION`"}[command[0]] in "\n".join(titles)
    if command[0] != "memory":
        assert any(t.startswith(("--trainer.*: ", "--decode.*: ")) for t in titles), titles


def test_a_mistyped_nested_field_of_the_retriever_job_names_the_field_and_the_file(tmp_path, capsys):
    f = tmp_path / "retriever.json"
    f.write_text(json.dumps({"corpus": "c", "out": "o", "model": {"embed_dimm": 16}}))
    assert main(["train", "retriever", "--config", str(f)]) == 1
    err = capsys.readouterr().err
    assert "model.embed_dimm" in err and "retriever.json" in err


def test_job_flags_keep_their_short_and_negated_spellings():
    from ramm.config import GenerateImageConfig, MemoryBuildConfig
    _, cfg, _ = build_cli().parse(["generate", "image", "a caption", "--model", "m", "--out", "o", "-k", "3",
                                   "--no-retrieve", "--no-rerank", "--exclude", "[x, y]"], bundle=False)
    assert isinstance(cfg, GenerateImageConfig)
    assert (cfg.caption, cfg.k, cfg.retrieve, cfg.rerank, cfg.exclude) == ("a caption", 3, False, False, ("x", "y"))
    _, cfg, _ = build_cli().parse(["memory", "build", "--corpus", "c", "--encoder", "e", "--out", "o",
                                   "--splits", "[val,test]", "--split.group-by", "source"])
    assert isinstance(cfg, MemoryBuildConfig)
    assert cfg.splits == ("val", "test") and cfg.split.group_by == "source"


def test_split_config_places_rows_without_a_split_by_a_seeded_hash_of_the_group():
    from ramm.config import SplitConfig
    from ramm.corpus.document import Document, TextSegment
    docs = [Document(f"d{i}", [TextSegment(f"t{i}")], metadata={"photo": i // 2}) for i in range(200)]
    docs.append(Document("own", [TextSegment("t")], metadata={"split": "test", "photo": 0}))
    split = SplitConfig(group_by="photo")
    placed = {d.id: split.of(d) for d in docs}
    assert placed["own"] == "test"
    assert all(placed[f"d{2 * i}"] == placed[f"d{2 * i + 1}"] for i in range(100))  # a group shares its split
    assert 120 <= sum(s == "train" for s in placed.values()) <= 190  # about 80%
    assert [d.id for d in split.select(docs, "test")] == [d for d in placed if placed[d] == "test"]
    with pytest.raises(ValueError, match="fractions"):
        SplitConfig(fractions={"train": 0.5})


def test_a_bare_boolean_flag_sets_it_and_an_optional_positional_may_be_left_out():
    cli = build_cli()
    for argv, verify in ((["c.jsonl", "--verify"], True), (["--verify", "c.jsonl"], True),
                         (["--no-verify", "c.jsonl"], False), (["--strict", "--verify", "c.jsonl"], True),
                         (["c.jsonl", "--verify", "--no-verify"], False), (["c.jsonl"], False)):
        _, cfg, _ = cli.parse(["data", "stats", *argv])
        assert (cfg.path, cfg.verify) == ("c.jsonl", verify), argv
    _, cfg, _ = cli.parse(["generate", "image", "--model", "m", "--out", "o", "--retrieve", "a caption"], bundle=False)
    assert (cfg.caption, cfg.retrieve) == ("a caption", True)
    _, cfg, _ = cli.parse(["memory", "search", "mem", "--image", "q.png", "-k", "3"])
    assert (cfg.memory, cfg.text, cfg.image, cfg.k) == ("mem", None, "q.png", 3)
    with pytest.raises(ValueError, match="either a text query or --image"):
        cli.parse(["memory", "search", "mem"])


@pytest.mark.parametrize("argv,line", [
    (["data", "stats", "c.jsonl", "--no_verify"], "--no_verify is spelled --no-verify now"),
    (["data", "stats", "--no_verify", "c.jsonl"], "--no_verify is spelled --no-verify now"),
    (["train", "generator", "--corpus", "c", "--out", "o", "--no_trainer.amp_cpu"],
     "--no_trainer.amp_cpu is spelled --no-trainer.amp-cpu now"),
    (["train", "generator", "--corpus", "c", "--out", "o", "--no_copy_gate_reads"],
     "--no_copy_gate_reads is spelled --no-copy-gate-reads now")])
def test_an_old_underscored_negation_is_one_line_naming_the_new_flag(argv, line, capsys):
    assert main(argv) == 1
    assert capsys.readouterr().err == f"ramm: error: {line}\n"


@pytest.mark.parametrize("argv,line", [
    (["data", "stats", "--strict", "true", "c.jsonl"],
     "--strict takes no value now (--strict true): --strict sets it, --no-strict clears it"),
    (["data", "stats", "c.jsonl", "--verify=yes"],
     "--verify takes no value now (--verify=yes): --verify sets it, --no-verify clears it"),
    (["train", "generator", "--corpus", "c", "--out", "o", "--trainer.resume", "false"],
     "--trainer.resume takes no value now (--trainer.resume false): --trainer.resume sets it, "
     "--no-trainer.resume clears it"),
    (["train", "generator", "--corpus", "c", "--out", "o", "--copy-gate-reads", "False"],
     "--copy-gate-reads takes no value now (--copy-gate-reads False): --copy_gate_reads sets it, "
     "--no-copy-gate-reads clears it")])
def test_a_boolean_flag_given_a_value_as_before_is_one_line_naming_the_spellings_now(argv, line, capsys):
    assert main(argv) == 1
    assert capsys.readouterr().err == f"ramm: error: {line}\n"


def _shown_flags(command: list[str], capsys) -> list[str]:
    """Every option string `ramm COMMAND --help` lists (its options' first column)."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    flags = []
    for line in out.splitlines():
        if re.match(r"  -", line):
            flags += [part.split()[0] for part in re.split(r",\s+", line.strip().split("  ")[0])]
    return flags


@pytest.mark.parametrize("command", [["train", "generator"], ["train", "sft"], ["generate", "image"], ["data", "stats"],
                                     ["memory", "search"], ["serve"]])
def test_help_shows_one_spelling_per_flag(command, capsys):
    flags = _shown_flags(command, capsys)
    assert len(flags) == len(set(flags)) > 5, flags
    shown = set(flags)
    for flag in flags:  # a flag's other spellings are hidden: dashed, bare DecodeConfig names, ALIASES
        if "_" in flag and not flag.startswith("--no-"):
            assert flag.replace("_", "-") not in shown, flag
        if flag.startswith("--decode.") and command[0] == "generate":
            assert "--" + flag.split(".", 1)[1] not in shown, flag
    assert not shown & {"-k", "--from", "--method", "--top-k", "--top_k", "--batch-size", "--trainer.batch-size"}
    if command == ["train", "generator"]:
        assert {"--trainer.batch_size", "--trainer.amp_cpu", "--no-trainer.amp-cpu", "--copy_gate_reads",
                "--no-copy-gate-reads", "--retrieval", "--no-retrieval", "--decode.image.top_k"} <= shown


def _config(argv: list[str]):
    return build_cli(argv).parse(argv, bundle=False)[1]


GENERATOR = ["train", "generator", "--corpus", "c", "--out", "o"]
IMAGE = ["generate", "image", "a caption", "--model", "m", "--out", "o"]


@pytest.mark.parametrize("base,old,new", [
    (GENERATOR,
     ["--trainer.batch-size", "4", "--trainer.amp-cpu", "--copy-gate-reads", "--text-tokenizer", "t",
      "--decode.image.top-k", "5", "--split.group-by", "kind"],
     ["--trainer.batch_size", "4", "--trainer.amp_cpu", "--copy_gate_reads", "--text_tokenizer", "t",
      "--decode.image.top_k", "5", "--split.group_by", "kind"]),
    (IMAGE,
     ["-k", "3", "--method", "cfg", "--top-k", "7", "--guidance_scale", "2", "--cd-alpha", "0.2", "--batch-size", "2"],
     ["--k", "3", "--decode.method", "cfg", "--decode.top_k", "7", "--decode.guidance_scale", "2",
      "--decode.cd_alpha", "0.2", "--batch_size", "2"]),
    (["train", "sft", "--corpus", "c", "--out", "o"], ["--from", "g", "--heldout-templates", "2"],
     ["--pretrained", "g", "--heldout_templates", "2"]),
])
def test_old_spellings_parse_to_the_same_config(base, old, new):
    assert _config(base + old) == _config(base + new) != _config(base)


def test_hidden_spellings_keep_their_values_with_a_config_file_and_print_config(tmp_path, capsys):
    f = tmp_path / "gen.json"
    f.write_text(json.dumps({"corpus": "c", "out": "o", "retrieval": False, "trainer": {"amp_cpu": True, "steps": 9}}))
    cfg = _config(["train", "generator", "--config", str(f), "--trainer.batch-size", "3"])
    assert (cfg.retrieval, cfg.trainer.amp_cpu, cfg.trainer.steps, cfg.trainer.batch_size) == (False, True, 9, 3)
    cfg = _config(["train", "generator", "--config", str(f), "--retrieval", "--no-trainer.amp-cpu"])
    assert (cfg.retrieval, cfg.trainer.amp_cpu) == (True, False)  # flags override the file's booleans
    with pytest.raises(SystemExit):
        main(["train", "generator", "--config", str(f), "--trainer.batch-size", "3", "--print_config"])
    out = capsys.readouterr().out
    assert "batch_size: 3" in out and "amp_cpu: true" in out and "retrieval: false" in out
    f = tmp_path / "image.json"
    f.write_text(json.dumps({"caption": "c", "model": "m", "out": "o", "retrieve": None, "rerank": False}))
    cfg = _config(["generate", "image", "--config", str(f), "--top-k", "4"])
    assert (cfg.retrieve, cfg.rerank, cfg.decode.top_k) == (None, False, 4)


def test_every_command_takes_its_config_from_one_home():
    """The library's commands read their configs from `ramm.config` (the lab's from `ramm_lab.jobs`), each a
    dataclass named for what it configures."""
    homes = {"ramm": "ramm.config.", "ramm_lab": "ramm_lab.jobs"}
    cli = build_cli()
    assert len(cli.commands) > 20
    for path, command in cli.commands.items():
        module = command.cls.__module__
        assert module.startswith(homes[module.split(".")[0]]), (path, module)
        assert command.cls.__name__.endswith("Config") or module == "ramm_lab.jobs", (path, command.cls)
