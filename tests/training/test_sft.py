"""Instruction tuning (ramm.training.sft_data / sft_recipe) and its facade calls on a tiny coloured-square corpus."""
import json

import numpy as np
import pytest
import torch

from ramm.corpus.document import Document, ImageSegment, TextSegment, encode_png
from ramm.training import sft_data
from ramm.training.sft_data import SFTDataset, build_items, encode_item, split_templates, with_templates

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 20)}
SIZE = 16
# the toy corpus' own tasks bring their wordings, as a corpus format's hooks do (CorpusHooks.sft_templates)
OWN = {"edit": ("make it {tone}", "turn it {tone}", "colour: {tone}", "recolour it {tone}", "now {tone}",
                "paint it {tone}", "{tone}, please", "change it to {tone}", "the {tone} one"),
       "vqa_tone": ("what colour is this?", "which colour?", "colour?", "name its colour", "its colour is",
                    "tell me the colour", "what colour is the square?", "say its colour", "which colour is shown?")}
TEMPLATES = with_templates(OWN)


def square(rgb):
    img = np.full((SIZE, SIZE, 3), 255, np.uint8)
    img[3:-3, 3:-3] = rgb
    return img


def silhouette():
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[3:-3, 3:-3] = 255
    return m


PAIRS = {"edit": [(f"sq-{a}", f"sq-{b}", {"tone": b}) for a in COLOURS for b in COLOURS if a != b],
         "vqa_tone": [(f"sq-{a}", a) for a in COLOURS]}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A corpus (JSONL + PNGs), tokenizers and a random tiny generator, written as `ramm` would."""
    from ramm.model.bundle import save_generator
    from ramm.model.transformer import Transformer, TransformerConfig
    from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.tokenizers.vocab import Vocabulary

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("sft")
    rows = []
    for name, rgb in COLOURS.items():
        (root / f"{name}.png").write_bytes(encode_png(square(rgb)))
        rows.append({"id": f"sq-{name}", "caption": f"a {name} square", "image": f"{name}.png", "split": "train"})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = [t.format(caption="a red square", tone=c, style="x") for ts in TEMPLATES.values() for t in ts for c in COLOURS]
    text_tok = TextTokenizer.train(texts * 3, vocab_size=300)
    text_tok.save_pretrained(root / "text-tok")
    image_tok = ImageTokenizer(ImageTokenizerConfig(image_size=SIZE, grid=4, patch=2, channels=8, latent_dim=8))
    with torch.no_grad():  # the codebook's k-means init happens on the first encode: do it before saving
        image_tok.encode(torch.stack([ImageSegment(pixels=square(c)).to_tensor() for c in COLOURS.values()]))
    image_tok.eval().save_pretrained(root / "image-tok")
    vocab = Vocabulary(text_tok.vocab_size, image_tok.codebook_size)
    gen = Transformer(TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=96))
    save_generator(gen, root / "gen", text_tokenizer=root / "text-tok", image_tokenizer=root / "image-tok")
    return root


@pytest.fixture(scope="module")
def setup(bundle):
    from ramm.corpus import open_corpus
    from ramm.model.bundle import bundle_info, load_generator
    from ramm.training.sft_recipe import prepare

    model, fmt, _ = load_generator(bundle / "gen", device="cpu")
    docs = list(open_corpus(bundle / "corpus.jsonl"))
    masks = {d.id: silhouette() for d in docs}
    lookup, silhouettes = prepare(fmt, bundle_info(bundle / "gen")["image_tokenizer"], docs, masks)
    return model, fmt, build_items(lookup, PAIRS, silhouettes), lookup


def test_loss_is_on_the_response_only(setup):
    model, fmt, items, _ = setup
    ids, weights = encode_item(fmt, items["edit"][0], 0, templates=TEMPLATES)
    start = weights.index(1.0)
    data = SFTDataset(items, {"edit": 1.0}, fmt, templates=TEMPLATES)
    batch = data.collate([(ids, weights)])
    assert int(batch["targets"].ne(-100).sum()) == len(ids) - start  # exactly the response and </doc>

    def loss(labels):
        targets = data.collate([(labels, weights)])["targets"]
        with torch.no_grad():
            return float(model(batch["idx"], targets=targets)[1])

    base = loss(ids)
    prompt_changed = list(ids)
    prompt_changed[start - 3] = (ids[start - 3] + 1) % fmt.vocab.size
    assert loss(prompt_changed) == base  # a prompt token's label never counts
    response_changed = list(ids)
    response_changed[start + 2] = (ids[start + 2] + 1) % fmt.vocab.size
    assert loss(response_changed) != base


def test_every_task_parses_back_to_its_prompt_and_response(setup):
    _, fmt, items, _ = setup
    assert {t for t, v in items.items() if v} == {"text_to_image", "caption", "edit", "controlled", "segment",
                                                  "vqa_tone", "infill"}
    for task, task_items in items.items():
        for item in task_items[:2]:
            ids, weights = encode_item(fmt, item, 0, templates=TEMPLATES)
            start = weights.index(1.0)
            doc = fmt.parse(ids, decode_images=False)
            if task == "infill":  # the masked image is moved back into its place
                assert doc.text == item.slots["caption"] and len(doc.images) == 1
                continue
            prompt, response = item.render(0, TEMPLATES)
            n_prompt_images = sum(isinstance(s, ImageSegment) for s in prompt)
            assert ids[:start].count(fmt.vocab.img) == n_prompt_images + (task in sft_data.IMAGE_TASKS)
            if isinstance(response, TextSegment):
                assert doc.texts[-1] == response.text and ids[start - 1] == fmt.vocab.brk
            else:
                assert len(doc.images) == n_prompt_images + 1
                np.testing.assert_array_equal(doc.images[-1].tokens, response.tokens)
            assert ids[-1] == fmt.vocab.doc_end and doc.texts[0] == TEMPLATES[task][0].format(**item.slots)


def test_heldout_templates_never_reach_training(setup):
    _, fmt, items, _ = setup
    data = SFTDataset(items, {t: 1.0 for t in items}, fmt, heldout=2, seed=3, templates=TEMPLATES)
    held = {t: [TEMPLATES[t][i] for i in split_templates(t, 2, TEMPLATES)[1]] for t in data.tasks}
    for epoch in range(2):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item, template = data.draw(i)
            assert template in split_templates(item.task, 2, TEMPLATES)[0]
            ids, weights = data[i]
            text = fmt.parse(ids, decode_images=False).texts[0] if item.task != "infill" else ""
            assert all(text != h.format(**item.slots) for h in held[item.task])
    assert split_templates("edit", 2, TEMPLATES) == (list(range(7)), [7, 8]) and split_templates("infill", 1) == ([0], [])
    again = SFTDataset(items, {t: 1.0 for t in items}, fmt, heldout=2, seed=3, templates=TEMPLATES)
    again.set_epoch(1)
    assert [again.draw(i) for i in range(8)] == [data.draw(i) for i in range(8)]  # resume: (seed, epoch, index)
    assert [data.draw(i, epoch=0) for i in range(8)] != [data.draw(i) for i in range(8)]


def test_library_wordings_name_no_corpus_and_a_task_without_wordings_is_an_error_naming_it(setup):
    _, fmt, items, _ = setup
    words = " ".join(t for ts in sft_data.TEMPLATES.values() for t in ts).split()
    assert not {"emoji", "skin", "tone", "flag", "country", "style", "category"} & set(words)
    with pytest.raises(ValueError, match="no instruction templates for SFT task 'edit'"):
        SFTDataset(items, {"edit": 1.0}, fmt)  # the toy corpus' edits, without its wordings


def test_mixture_questions_take_their_place_and_default_to_the_corpus(setup):
    from ramm.config import SFTMixture
    order = list(SFTMixture().weights({"vqa_a": 1.0, "vqa_b": 0.5}))
    assert order == ["text_to_image", "caption", "edit", "style", "controlled", "segment", "vqa_a", "vqa_b",
                     "infill", "replay"]
    assert SFTMixture(questions={"vqa_b": 2.0}).weights({"vqa_a": 1.0})["vqa_b"] == 2.0
    with pytest.raises(ValueError, match="vqa_<kind>"):
        SFTMixture(questions={"colour": 1.0})


def test_bad_mixture_and_masks_are_clear_errors(setup):
    _, fmt, items, _ = setup
    with pytest.raises(ValueError, match="no task"):
        SFTDataset(items, {"style": 1.0}, fmt)
    with pytest.raises(ValueError, match="mask"):
        sft_data.mask_image(np.zeros((4, 4, 3)))
    assert sft_data.mask_iou(sft_data.image_to_mask(sft_data.mask_image(silhouette())), silhouette()) == 1.0


def test_sft_learns_a_toy_edit_far_above_chance_and_the_facade_serves_it(bundle, setup, tmp_path):
    from ramm.config import SFTConfig, SFTMixture, TrainerConfig
    from ramm.pipeline import RAMM
    from ramm.training.sft_recipe import train_sft

    _, _, _, lookup = setup
    mixture = SFTMixture(**{t: 0.0 for t in sft_data.TASKS if t != "edit"}, edit=1.0)
    cfg = SFTConfig(pretrained=str(bundle / "gen"), corpus=str(bundle / "corpus.jsonl"), out=str(tmp_path / "sft"),
                    mixture=mixture, trainer=TrainerConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=5,
                                                           log_every=20, progress=False, device="cpu"))
    result = train_sft(cfg, pairings=PAIRS, masks={}, templates=OWN)
    assert result["steps"] == 60 and result["items"]["edit"] == 12
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]  # logged at steps 20, 40, 60
    ramm = RAMM.load(tmp_path / "sft", device="cpu")
    hits, same_as_input = 0, 0
    for src, tgt, slots in PAIRS["edit"]:
        out = ramm.edit_image(lookup[src].image, TEMPLATES["edit"][0].format(**slots), method="greedy")
        got = [ramm.vocab.code(t) for t in out.tokens[0][:ramm.format.tokens_per_image]]
        hits += got == lookup[tgt].images[0].tokens.tolist()
        same_as_input += lookup[src].images[0].tokens.tolist() == lookup[tgt].images[0].tokens.tolist()
        assert out.outputs[0].shape == (SIZE, SIZE, 3) and out.retrieved == []
    assert same_as_input == 0 and hits >= 9, hits  # chance: one code sequence of many; "return the input": 0
    answer = ramm.answer(lookup["sq-red"].image, "what skin tone is this?")
    assert isinstance(answer.outputs[0], str)
    with pytest.raises(ValueError, match="instruction is empty"):
        ramm.edit_image(lookup["sq-red"].image, "  ")
    with pytest.raises(ValueError, match="too long"):
        ramm.answer(lookup["sq-red"].image, "red " * 200)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        ramm.edit_image(tmp_path / "bad.png", "make it red")


def test_cli_trains_sft_from_a_generator_and_generate_edit_writes_the_page(bundle, tmp_path, capsys):
    import shutil

    from ramm.__main__ import main
    from ramm.config import DecodeConfig, DecodeDefaults
    from ramm.model.bundle import set_decode_defaults

    shutil.copytree(bundle / "gen", tmp_path / "src")
    chosen = DecodeDefaults(image=DecodeConfig(method="cfg", guidance_scale=2.0), caption=DecodeConfig(method="greedy"))
    set_decode_defaults(tmp_path / "src", chosen)
    assert main(["train", "sft", "--from", str(tmp_path / "src"), "--corpus", str(bundle / "corpus.jsonl"),
                 "--out", str(tmp_path / "sft"), "--trainer.steps", "2", "--trainer.batch_size", "2",
                 "--trainer.warmup_steps", "1", "--no-trainer.progress", "--trainer.device", "cpu"]) == 0
    assert json.loads((tmp_path / "sft" / "generator.json").read_text())["sft"] is True
    from ramm.pipeline import RAMM
    assert RAMM.load(tmp_path / "sft", device="cpu").instruction_tuned  # what `ramm serve` offers edits on
    assert RAMM.load(tmp_path / "sft", device="cpu").decode == chosen  # decodes as the bundle it started from
    assert not RAMM.load(bundle / "gen", device="cpu").instruction_tuned
    assert main(["generate", "edit", str(bundle / "red.png"), "make the skin tone blue", "--model",
                 str(tmp_path / "sft"), "--out", str(tmp_path / "page"), "--n", "2", "--device", "cpu"]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert "make the skin tone blue" in page and (tmp_path / "page" / "sample_01.png").is_file()


def test_emojibench_pairings_pair_tones_styles_and_questions():
    from ramm_lab.emojibench import sft_pairings

    def doc(style, concept, tone, **meta):
        return Document(f"{style}-{concept}", [TextSegment(f"{style} emoji: x")],
                        metadata=dict(concept=concept, base="b", tone=tone, style=style, has_tones=True,
                                      category="People & Body", **meta))
    docs = [doc(s, c, t) for s in ("google", "twitter") for c, t in (("b", ""), ("b-1", "dark"))]
    docs.append(Document("google-jp", [TextSegment("google emoji: japan flag")],
                         metadata=dict(concept="jp", base="jp", tone="", style="google", has_tones=False,
                                       category="Flags", subcategory="country-flag", name="japan flag")))
    p = sft_pairings(docs)
    assert ("google-b", "google-b-1", {"tone": "dark"}) in p["edit"] and \
        ("twitter-b-1", "twitter-b", {"tone": "default"}) in p["edit"] and len(p["edit"]) == 4
    assert ("google-b", "twitter-b", {"style": "twitter"}) in p["style"] and len(p["style"]) == 4
    assert ("google-jp", "japan") in p["vqa_country"] and ("google-b-1", "dark") in p["vqa_tone"]
    assert ("google-jp", "flags") in p["vqa_category"]


def test_retrieved_documents_lead_the_prompt_carry_no_loss_and_never_are_the_target(bundle, setup, tmp_path):
    """SFT with retrieval (`retrieve_k`): the neighbours come first, weight 0; an edit never retrieves its own
    source or target (leave-one-out), and training items only train documents; the run records k for the facade."""
    from ramm.config import SFTConfig, SFTMixture, TrainerConfig
    from ramm.corpus import open_corpus
    from ramm.pipeline import RAMM
    from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
    from ramm.retrieval.memory import Memory
    from ramm.training.sft_recipe import sft_retriever, train_sft

    model, fmt, items, lookup = setup
    docs = list(open_corpus(bundle / "corpus.jsonl"))
    torch.manual_seed(0)
    enc = DualEncoder(DualEncoderConfig(image_size=SIZE, channels=(8, 16), text_vocab_size=300, text_max_len=8,
                                        text_width=16, text_layers=1, text_heads=2, embed_dim=16),
                      train_text_tokenizer([d.text for d in docs], 300))
    enc.save_pretrained(tmp_path / "enc")
    memory = Memory.build(docs, tmp_path / "enc", tmp_path / "mem", progress=False)
    retrieve = sft_retriever(memory, [lookup[d.id] for d in docs], lookup, k=2)
    for item in items["edit"]:
        got = [d.id for d in retrieve(item)]
        assert len(got) == 2 and item.source not in got and item.target not in got
    only = sft_retriever(memory, [lookup[d.id] for d in docs], lookup, k=2, allowed={"sq-red", "sq-blue"})
    assert {d.id for it in items["vqa_tone"] for d in only(it)} <= {"sq-red", "sq-blue"}

    item = items["edit"][0]
    plain_ids, plain_w = encode_item(fmt, item, 0, templates=TEMPLATES)
    ids, weights = encode_item(fmt, item, 0, retrieve(item), TEMPLATES)
    n = len(ids) - len(plain_ids)
    assert n > 0 and ids[n - 1] == fmt.vocab.sep and ids[n:] == plain_ids and weights[n:] == plain_w
    assert not any(weights[:n])  # retrieved documents carry no loss in SFT
    fits = sft_data.encode_within(fmt, item, 0, retrieve(item), max_len=len(plain_ids) + n - 1, templates=TEMPLATES)  # one too many
    assert len(fits[0]) < len(ids) and fits[0][-len(plain_ids):] == plain_ids
    with pytest.raises(ValueError, match=f"edit example of {item.source} has"):
        sft_data.encode_within(fmt, item, 0, retrieve(item), max_len=len(plain_ids) - 1, templates=TEMPLATES)

    mixture = SFTMixture(**{t: 0.0 for t in sft_data.TASKS if t != "edit"}, edit=1.0, questions={"vqa_tone": 1.0})
    cfg = SFTConfig(pretrained=str(bundle / "gen"), corpus=str(bundle / "corpus.jsonl"), out=str(tmp_path / "sft"),
                    mixture=mixture, retrieve_k=2, memory=str(tmp_path / "mem"),
                    trainer=TrainerConfig(steps=2, batch_size=2, warmup_steps=1, progress=False, device="cpu"))
    train_sft(cfg, pairings=PAIRS, masks={}, templates=OWN)
    ramm = RAMM.load(tmp_path / "sft", device="cpu")
    assert ramm.instruction_k == 2
    out = ramm.edit_image(lookup["sq-red"].image, "make the skin tone blue", exclude_ids=["sq-red", "sq-blue"])
    assert out.retrieved and {d.id for d in out.retrieved}.isdisjoint({"sq-red", "sq-blue"})  # what fits the context
    with pytest.raises(ValueError, match="needs a memory"):
        train_sft(SFTConfig(pretrained=str(bundle / "gen"), corpus=str(bundle / "corpus.jsonl"),
                            out=str(tmp_path / "sft2"), retrieve_k=1, trainer=cfg.trainer), pairings=PAIRS, masks={})


def test_pretraining_replay_fills_whole_micro_batches_and_keeps_its_weights(bundle, setup, caplog):
    """Replay (`SFTMixture.replay`): a micro-batch is all replay or all instructions, at the mixture's rate,
    deterministic in its samples; replay keeps pretraining's alpha weights, instructions select with 0 / 1."""
    from ramm.config import RAConfig
    from ramm.training.ra_data import RADataset
    from ramm.training.sft_recipe import pretraining_replay

    _, fmt, items, lookup = setup
    docs = list(lookup.values())
    neighbours = {k: [[d.id for d in docs if d.id != main.id][:2] for main in docs] for k in ("text", "image")}
    replay = RADataset(docs, neighbours, lookup, fmt, RAConfig(k_choices=(2,), seed=1))
    data = SFTDataset(items, {"edit": 1.0, "vqa_tone": 1.0}, fmt, replay=replay, replay_weight=2.0,
                      templates=TEMPLATES)
    assert data.p_replay == 0.5
    kinds = []
    for b in range(60):
        batch = data.batch_items([(0, 4 * b + j) for j in range(4)])
        is_replay = [fmt.vocab.brk not in ids and fmt.vocab.sep in ids and ids.count(fmt.vocab.doc) == 3 for ids, _ in batch]
        assert len(set(is_replay)) == 1  # never mixed
        kinds.append(is_replay[0])
        collated = data.collate(batch)
        assert ("loss_weights" in collated) == is_replay[0]  # alpha = 0.1 on the retrieved documents
        assert batch == data.batch_items([(0, 4 * b + j) for j in range(4)])
    assert 15 <= sum(kinds) <= 45
    assert not SFTDataset(items, {"edit": 1.0}, fmt, replay=replay, replay_weight=0.0, templates=TEMPLATES).p_replay
    with caplog.at_level("WARNING"):
        assert pretraining_replay(bundle, docs, lookup, fmt) is None  # no generator_config.json there
    assert "no pretraining replay" in caplog.text
