"""A bundle remembers how it decodes: generator.json's `decode` (the settings its run was evaluated with) is
what the facade, `ramm generate` and `ramm serve` decode with unless the caller overrides some field; a
bundle saved before it was recorded decodes with the library's defaults; the flags and the JSON field
users typed before the settings became one `DecodeConfig` still work."""
import base64
import importlib.util
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ramm.config import DecodeConfig, DecodeDefaults
from ramm.corpus.document import encode_png
from ramm.pipeline import RAMM

_spec = importlib.util.spec_from_file_location("ramm_test_pipeline_d", Path(__file__).parent / "test_pipeline.py")
pipeline_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline_tests)
CAPTION = "a emoji: red square"
DEMO = DecodeDefaults(image=DecodeConfig(method="cfg", guidance_scale=2.0, top_p=0.6),
                      caption=DecodeConfig(method="greedy"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The tiny random bundle saved with the demo's decoding ("demo"), and as a bundle from before
    generator.json recorded any ("old")."""
    from ramm.model.bundle import set_decode_defaults

    root = pipeline_tests.bundle.__wrapped__(tmp_path_factory)
    shutil.copytree(root / "gen", root / "demo")
    set_decode_defaults(root / "demo", DEMO)
    shutil.copytree(root / "gen", root / "old")
    info = json.loads((root / "old" / "generator.json").read_text())
    del info["decode"]
    (root / "old" / "generator.json").write_text(json.dumps(info))
    return root


def load(bundles, name):
    return RAMM.load(bundles / name, memory_dir=bundles / "memory", device="cpu")


def png(b64_or_path) -> np.ndarray:
    data = Path(b64_or_path).read_bytes() if isinstance(b64_or_path, Path) else base64.b64decode(b64_or_path)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_save_generator_writes_the_library_defaults_and_old_bundles_load_with_them(bundles):
    saved = json.loads((bundles / "gen" / "generator.json").read_text())["decode"]
    assert saved == {"image": asdict(DecodeConfig()), "caption": asdict(DecodeConfig())}
    assert load(bundles, "old").decode == DecodeDefaults()
    assert load(bundles, "demo").decode == DEMO


def test_the_facade_decodes_as_the_bundle_says_unless_the_caller_overrides(bundles):
    # one facade throughout: the random tiny tokenizer initialises its codebook on its first image
    demo = load(bundles, "demo")
    kw = dict(n=3, seed=4, rerank=False, k=0)
    chosen = demo.generate_image(CAPTION, **kw).tokens
    assert chosen == demo.generate_image(CAPTION, decode=DecodeConfig(method="cfg", guidance_scale=2.0, top_p=0.6),
                                         **kw).tokens
    assert chosen != demo.generate_image(CAPTION, decode=DecodeConfig(), **kw).tokens  # the library's default differs
    # a keyword replaces that field only, on the bundle's settings or on the caller's
    assert demo.generate_image(CAPTION, guidance_scale=5.0, **kw).tokens == \
        demo.generate_image(CAPTION, decode=DecodeConfig(method="cfg", guidance_scale=5.0, top_p=0.6), **kw).tokens
    assert demo.generate_image(CAPTION, decode=DecodeConfig(), method="cfg", **kw).tokens == \
        demo.generate_image(CAPTION, decode=DecodeConfig(method="cfg"), **kw).tokens
    image = pipeline_tests.square((220, 30, 30))
    captions = demo.caption_image(image, n=2, seed=1, rerank=False, k=0).tokens
    assert captions == demo.caption_image(image, n=2, seed=1, rerank=False, k=0, method="greedy").tokens
    assert captions != demo.caption_image(image, n=2, seed=1, rerank=False, k=0, method="sample").tokens
    with pytest.raises(ValueError, match="unknown decoding setting guidance "):
        demo.generate_image(CAPTION, guidance=2.0, **kw)
    with pytest.raises(ValueError, match="top_p must be in"):
        demo.generate_image(CAPTION, top_p=1.5, **kw)


def test_a_bad_decode_entry_in_generator_json_names_the_field(bundles, tmp_path):
    shutil.copytree(bundles / "demo", tmp_path / "bad")
    path = tmp_path / "bad" / "generator.json"
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "decode": {"image": {"top_p": 2}}}))
    with pytest.raises(ValueError, match=r"bad/generator.json: decode: top_p must be in \(0.0, 1.0\], got 2"):
        RAMM.load(tmp_path / "bad", device="cpu")
    path.write_text(json.dumps({**info, "decode": {"image": {"guidance": 2}}}))
    with pytest.raises(ValueError, match="unknown field decode.image.guidance"):
        RAMM.load(tmp_path / "bad", device="cpu")


def _generate(bundles, tmp_path, model, *extra):
    from ramm.__main__ import main

    out = tmp_path / f"{model}-{len(list(tmp_path.iterdir()))}"
    argv = ["generate", "image", CAPTION, "--model", bundles / model, "--memory", bundles / "memory",
            "--n", 2, "--k", 0, "--out", out, "--device", "cpu", *extra]
    assert main([str(a) for a in argv]) == 0
    return out, json.loads((out / "result.json").read_text())["settings"]["decode"]


def test_ramm_generate_decodes_as_the_bundle_says_unless_a_flag_overrides(bundles, tmp_path):
    out, decode = _generate(bundles, tmp_path, "demo")
    assert decode == asdict(DEMO.image)
    direct = load(bundles, "demo").generate_image(CAPTION, n=2, k=0)  # same seed, k, rerank: the same samples
    assert np.array_equal(png(out / "sample_00.png"), direct.outputs[0])
    _, decode = _generate(bundles, tmp_path, "demo", "--decode.top_p", 0.9)
    assert decode == {**asdict(DEMO.image), "top_p": 0.9}  # only the flag's field changes
    _, decode = _generate(bundles, tmp_path, "old")
    assert decode == asdict(DecodeConfig())


def test_the_flags_of_before_set_the_decode_fields(bundles, tmp_path):
    _, decode = _generate(bundles, tmp_path, "old", "--method", "cfg", "--guidance_scale", 2, "--top-p", 0.6,
                          "--temperature", 0.9, "--top_k", 50, "--cd_alpha", 0.2, "--cd-k", 4)
    assert decode == asdict(DecodeConfig(method="cfg", guidance_scale=2.0, top_p=0.6, temperature=0.9, top_k=50,
                                         cd_alpha=0.2, cd_k=4))
    _, same = _generate(bundles, tmp_path, "old", "--decode.method", "cfg", "--decode.guidance_scale", 2,
                        "--decode.top_p", 0.6, "--decode.temperature", 0.9, "--decode.top_k", 50,
                        "--decode.cd_alpha", 0.2, "--decode.cd_k", 4)
    assert same == decode
    from ramm.cli import build_cli
    with pytest.raises(SystemExit):  # the bare names belong to a job's DecodeConfig only, not the recipe's defaults
        build_cli().parse(["train", "generator", "--image", "{}"])


def test_ramm_generate_refuses_bad_decoding_in_one_line_naming_the_field(bundles, tmp_path, capsys):
    from ramm.__main__ import main

    argv = ["generate", "image", CAPTION, "--model", bundles / "demo", "--out", tmp_path / "x", "--top_p", 1.5]
    assert main([str(a) for a in argv]) != 0
    err = capsys.readouterr().err
    assert "top_p" in err and "Traceback" not in err
    argv = ["generate", "caption", bundles / "x.png", "--model", bundles / "demo", "--out", tmp_path / "y",
            "--decode.method", "mix"]
    assert main([str(a) for a in argv]) != 0
    err = capsys.readouterr().err
    assert "mix is for images" in err and "Traceback" not in err


def test_ramm_serve_decodes_as_the_bundle_says_unless_the_request_overrides(bundles, tmp_path):
    from fastapi.testclient import TestClient

    from ramm.serve import ServeConfig, create_app

    memory = tmp_path / "memory"
    shutil.copytree(bundles / "memory", memory)
    facade = RAMM.load(bundles / "demo", memory_dir=memory, device="cpu")
    used = []  # the settings each decode ran with (the random tiny tokenizer draws many codes alike)
    sample = facade._sample
    facade._sample = lambda prompts, uncond, config, *a, **kw: used.append(config) or sample(prompts, uncond, config,
                                                                                             *a, **kw)
    app = create_app(ServeConfig(model=str(bundles / "demo"), memory=str(memory), batching=False), ramm=facade)
    with TestClient(app) as client:
        assert client.get("/v1/capabilities").json()["decode"] == {"image": asdict(DEMO.image),
                                                                  "caption": asdict(DEMO.caption)}

        def served(**fields):
            r = client.post("/v1/images", json={"caption": CAPTION, "n": 2, "seed": 3, "k": 0, **fields})
            assert r.status_code == 200, r.text
            return [png(s["image"]) for s in r.json()["samples"]], used[-1]

        images, settings = served()
        assert settings == DEMO.image
        assert np.array_equal(images, facade.generate_image(CAPTION, n=2, seed=3, k=0).outputs)
        assert served(guidance_scale=5.0)[1] == DecodeConfig(method="cfg", guidance_scale=5.0, top_p=0.6)
        assert served(guidance=5.0)[1] == DecodeConfig(method="cfg", guidance_scale=5.0, top_p=0.6)  # the old name
        assert served(method="sample", top_k=7)[1] == DecodeConfig(method="sample", guidance_scale=2.0, top_p=0.6, top_k=7)
        image = pipeline_tests.square((220, 30, 30))
        for fields, want in (({}, DEMO.caption), ({"method": "sample"}, DecodeConfig(method="sample"))):
            r = client.post("/v1/captions", files={"file": ("q.png", encode_png(image), "image/png")},
                            data={"n": "1", "max_tokens": "4", **fields})
            assert r.status_code == 200 and used[-1] == want, r.text


def test_a_config_file_overrides_the_bundles_decoding_and_a_flag_the_file(tmp_path):
    from ramm.cli import build_cli

    cli = build_cli()
    bundle = {f"decode.{k}": v for k, v in asdict(DEMO.image).items()}  # what `ramm generate image` reads
    (tmp_path / "job.json").write_text(json.dumps({"decode": {"top_p": 0.9}}))
    argv = [CAPTION, "--model", "m", "--out", "o", "--config", str(tmp_path / "job.json")]
    cli.commands["generate", "image"].defaults = lambda parsed: bundle
    parse = lambda *extra: cli.parse(["generate", "image", *argv, *extra])[1].decode  # noqa: E731
    assert parse() == DecodeConfig(method="cfg", guidance_scale=2.0, top_p=0.9)
    assert parse("--guidance-scale", "4") == DecodeConfig(method="cfg", guidance_scale=4.0, top_p=0.9)
