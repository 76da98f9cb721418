"""A bundle remembers how it retrieves: the facade, `ramm generate` and `ramm serve` retrieve as the bundle
trained (a vanilla bundle nothing, an RA one its eval_k) unless the caller says otherwise; and a run folder
moved whole still finds its memory (generator.json holds it relative to the bundle)."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ramm.pipeline import RAMM

_spec = importlib.util.spec_from_file_location("ramm_test_pipeline_b", Path(__file__).parent / "test_pipeline.py")
pipeline_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline_tests)
CAPTION = "a emoji: red square"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The tiny random bundle as a vanilla one (retrieval false) and an RA one that trained with k = 1."""
    root = pipeline_tests.bundle.__wrapped__(tmp_path_factory)
    for name, retrieval, eval_k in (("vanilla", False, 2), ("ra1", True, 1)):
        shutil.copytree(root / "gen", root / name)
        info = json.loads((root / name / "generator.json").read_text())
        (root / name / "generator.json").write_text(json.dumps({**info, "retrieval": retrieval, "eval_k": eval_k}))
    return root


def test_the_facade_retrieves_as_the_bundle_trained_unless_asked(bundles):
    vanilla = RAMM.load(bundles / "vanilla", memory_dir=bundles / "memory", device="cpu")
    assert vanilla.generate_image(CAPTION, n=1).retrieved == []
    assert vanilla.caption_image(pipeline_tests.square((220, 30, 30)), n=1).retrieved == []
    assert len(vanilla.generate_image(CAPTION, n=1, k=2).retrieved) == 2  # the caller's k wins
    ra1 = RAMM.load(bundles / "ra1", memory_dir=bundles / "memory", device="cpu")
    assert len(ra1.generate_image(CAPTION, n=1).retrieved) == 1
    assert ra1.generate_image(CAPTION, n=1, retrieve=False).retrieved == []
    old = RAMM.load(bundles / "gen", memory_dir=bundles / "memory", device="cpu")  # says nothing: RA-CM3's 2
    assert len(old.generate_image(CAPTION, n=1).retrieved) == 2


def test_ramm_generate_retrieves_as_the_bundle_trained_unless_asked(bundles, tmp_path):
    from ramm.__main__ import main

    def run(model, *extra):
        out = tmp_path / f"{model}{len(extra)}"
        argv = ["generate", "image", CAPTION, "--model", bundles / model, "--memory", bundles / "memory",
                "--n", 1, "--out", out, "--device", "cpu", *extra]
        assert main([str(a) for a in argv]) == 0
        return json.loads((out / "result.json").read_text())["retrieved"]

    assert run("vanilla") == []
    assert len(run("vanilla", "--k", 2)) == 2
    assert len(run("ra1")) == 1


def test_ramm_serve_retrieves_as_the_bundle_trained_unless_asked(bundles, tmp_path):
    from fastapi.testclient import TestClient

    from ramm.serve import ServeConfig, create_app

    memory = tmp_path / "memory"
    shutil.copytree(bundles / "memory", memory)
    for model, default_k in (("vanilla", 0), ("ra1", 1)):
        facade = RAMM.load(bundles / model, memory_dir=memory, device="cpu")
        app = create_app(ServeConfig(model=str(bundles / model), memory=str(memory)), ramm=facade)
        with TestClient(app) as client:
            assert client.get("/v1/capabilities").json()["k"] == default_k
            body = client.post("/v1/images", json={"caption": CAPTION, "n": 1}).json()
            assert len(body["retrieved"]) == default_k
            body = client.post("/v1/images", json={"caption": CAPTION, "n": 1, "k": 2}).json()
            assert len(body["retrieved"]) == 2


def test_a_run_folder_moved_whole_still_finds_its_memory(bundles, tmp_path):
    from ramm.model.bundle import load_generator, save_generator

    model, _, _ = load_generator(bundles / "gen", device="cpu")
    run = tmp_path / "run"
    shutil.copytree(bundles / "memory", run / "memory")
    save_generator(model, run / "gen", text_tokenizer=bundles / "gen" / "text_tokenizer",
                   image_tokenizer=bundles / "gen" / "image_tokenizer", memory=run / "memory")
    assert json.loads((run / "gen" / "generator.json").read_text())["memory"] == "../memory"
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    ramm = RAMM.load(moved / "gen", device="cpu")
    assert ramm.memory is not None and Path(ramm.memory.root).resolve() == (moved / "memory").resolve()
    assert len(ramm.generate_image(CAPTION, n=1).retrieved) == 2
