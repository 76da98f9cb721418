import pytest
import torch

from ramm.config import DecodeConfig
from ramm.decoding.decoder import CLOSE, IMAGE, TEXT, ModalityConstraint, generate, left_pad
TPI = 4  # matches the conftest vocabulary fixtures


def image_prompts(vocab):
    # retrieved-doc-like prefixes of different lengths, all ending in <img>
    return [[vocab.doc, 1, 2, 3, vocab.img],
            [vocab.doc, 5, vocab.img, *vocab.image_id([1, 2, 3, 4]).tolist(), vocab.img_end, vocab.doc_end,
             vocab.sep, vocab.doc, 7, vocab.img],
            [vocab.doc, 9, 9, vocab.img]]


def uncond(vocab, n):
    return [[vocab.doc, vocab.mask, vocab.img]] * n


def run(model, vocab, prompts, seed=0, **kw):
    kw.setdefault("tokens_per_image", TPI)
    kw.setdefault("max_new_tokens", TPI + 1)
    return generate(model, vocab, prompts, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("method", ["sample", "greedy", "cfg", "cd"])
def test_generated_images_have_exactly_the_grid_size(model, vocab, method):
    prompts = image_prompts(vocab)
    out = run(model, vocab, prompts, config=DecodeConfig(method=method), uncond_prompts=uncond(vocab, 3),
              stop_after_image=True, max_new_tokens=TPI + 6)
    for row in out:
        assert len(row) == TPI + 1
        assert vocab.is_image(row[:TPI]).all()
        assert row[TPI] == vocab.img_end


def test_same_seed_same_output_and_other_seed_differs(model, vocab):
    prompts = image_prompts(vocab) * 4
    a = run(model, vocab, prompts, seed=1, stop_after_image=True)
    b = run(model, vocab, prompts, seed=1, stop_after_image=True)
    c = run(model, vocab, prompts, seed=2, stop_after_image=True)
    assert a == b
    assert a != c


def test_kv_cache_decoding_equals_full_recompute_token_for_token(model, vocab):
    prompts = [[vocab.doc, 1, 2, 3], [vocab.doc, 4], [vocab.doc, 5, 6, vocab.img, *vocab.image_id([1, 2]).tolist()]]
    kw = dict(config=DecodeConfig(method="greedy"), max_new_tokens=30, tokens_per_image=TPI)
    fast = generate(model, vocab, prompts, **kw)
    slow = generate(model, vocab, prompts, use_cache=False, **kw)
    assert fast == slow
    assert sum(map(len, fast)) > 3 * TPI  # really decoded something


@pytest.mark.parametrize("method", ["greedy", "cfg"])
def test_packed_weight_decoding_equals_plain(model, vocab, monkeypatch, method):
    import ramm.model.packing as P
    prompts = image_prompts(vocab) * 3
    kw = dict(config=DecodeConfig(method=method), uncond_prompts=uncond(vocab, len(prompts)), max_new_tokens=3 * TPI)
    monkeypatch.setattr(P, "PACK_MIN_TOKENS", 1)
    packed = run(model, vocab, prompts, **kw)
    monkeypatch.setattr(P, "PACK_MIN_TOKENS", 10 ** 9)
    assert packed == run(model, vocab, prompts, **kw)


@pytest.mark.parametrize("method", ["greedy", "cfg", "cd"])
@pytest.mark.parametrize("mixed", [False, True])
def test_computing_only_the_grammars_logits_changes_no_token(model, vocab, monkeypatch, method, mixed):
    import ramm.decoding.decoder as G
    # images only (their codes' columns), or rows drawing images and text under a doc_end stop token
    prompts = image_prompts(vocab) + ([[vocab.doc, 4, 5], [vocab.doc, 6]] if mixed else [])
    kw = dict(config=DecodeConfig(method=method, temperature=0.0), uncond_prompts=uncond(vocab, len(prompts)),
              max_new_tokens=3 * TPI, stop_tokens=[vocab.doc_end], stop_after_image=not mixed)
    seen = []
    columns = G.ModalityConstraint.columns
    monkeypatch.setattr(G.ModalityConstraint, "columns", lambda self, r: seen.append(columns(self, r)) or seen[-1])
    restricted = run(model, vocab, prompts, **kw)
    assert any(c.ranges is not None for c in seen)  # the restriction was really used
    monkeypatch.setattr(G.ModalityConstraint, "columns", lambda self, r: G.Columns(None, None, self.blocked(r)))
    assert restricted == run(model, vocab, prompts, **kw)


def test_column_plans_follow_the_states_present(vocab):
    c = ModalityConstraint(vocab, vocab.size, TPI, [[vocab.doc, vocab.img]] * 2, [vocab.doc_end], True, False, "cpu")
    image = c.columns(10)
    assert image.ranges == [(vocab.image_offset, vocab.special_offset)] and image.blocked.shape == (2, vocab.image_size)
    assert image.ids.tolist() == list(range(vocab.image_offset, vocab.special_offset)) and not image.blocked.any()
    c.state = [TEXT, CLOSE]
    mixed = c.columns(10)  # text ids and the specials legal in text or after a grid (</img>, </doc>, <img>, ...)
    ids = mixed.ids.tolist()
    assert set(range(vocab.text_size)) | {vocab.img_end, vocab.doc_end, vocab.img} <= set(ids)
    assert (~mixed.blocked[1]).nonzero().flatten().tolist() == [ids.index(vocab.img_end)]
    torch.testing.assert_close(mixed.blocked, c.blocked(10)[:, mixed.ids])
    # with a codebook wider than RANGE_GAP the image codes between text and specials are skipped
    from ramm.decoding.decoder import RANGE_GAP
    from ramm.tokenizers.vocab import Vocabulary
    wide = Vocabulary(text_size=100, image_size=RANGE_GAP + 1)
    text = ModalityConstraint(wide, wide.size, TPI, [[wide.doc, 3]], [wide.doc_end], True, False, "cpu").columns(10)
    assert text.ranges[0] == (0, wide.text_size) and text.ranges[1][0] >= wide.special_offset
    assert not wide.is_image(text.ids.numpy()).any() and wide.img in text.ids.tolist()


def test_left_padded_batch_equals_each_prompt_alone(model, vocab):
    prompts = [[vocab.doc, 1, 2, 3, 4, 5, 6], [vocab.doc, 7]]
    kw = dict(config=DecodeConfig(method="greedy"), max_new_tokens=12, tokens_per_image=TPI)
    batched = generate(model, vocab, prompts, **kw)
    assert batched == [generate(model, vocab, [p], **kw)[0] for p in prompts]


def test_cfg_scale_one_equals_conditional_sampling(model, vocab):
    prompts = image_prompts(vocab)
    plain = run(model, vocab, prompts, seed=5, stop_after_image=True)
    guided = run(model, vocab, prompts, seed=5, stop_after_image=True, uncond_prompts=uncond(vocab, 3),
                 config=DecodeConfig(method="cfg", guidance_scale=1.0))
    assert guided == plain


def test_cfg_scale_zero_equals_unconditional_sampling(model, vocab):
    prompts, un = image_prompts(vocab), uncond(vocab, 3)
    unconditional = run(model, vocab, un, seed=5, stop_after_image=True)
    guided = run(model, vocab, prompts, seed=5, stop_after_image=True, uncond_prompts=un,
                 config=DecodeConfig(method="cfg", guidance_scale=0.0))
    assert guided == unconditional


def test_cfg_large_scale_changes_samples(model, vocab):
    prompts, un = image_prompts(vocab) * 3, uncond(vocab, 9)
    plain = run(model, vocab, prompts, seed=5, stop_after_image=True)
    guided = run(model, vocab, prompts, seed=5, stop_after_image=True, uncond_prompts=un,
                 config=DecodeConfig(method="cfg", guidance_scale=5.0))
    assert guided != plain


def test_cd_k_with_single_candidate_is_greedy(model, vocab):
    prompts = image_prompts(vocab)
    greedy = run(model, vocab, prompts, stop_after_image=True, config=DecodeConfig(method="greedy"))
    cd = run(model, vocab, prompts, stop_after_image=True, uncond_prompts=uncond(vocab, 3),
             config=DecodeConfig(method="cd", cd_alpha=1.0, cd_k=1))
    assert cd == greedy


def test_cd_k_picks_from_the_candidate_set(model, vocab):
    """Greedy CD-K never picks a token outside the conditional top-k (alpha = 1)."""
    prompts = image_prompts(vocab)
    out = run(model, vocab, prompts, stop_after_image=True, uncond_prompts=uncond(vocab, 3),
              config=DecodeConfig(method="cd", cd_alpha=1.0, cd_k=3, temperature=0.0))
    idx, attn = left_pad([p + r[:1] for p, r in zip(prompts, out)], vocab.pad, "cpu")
    logits = model(idx, attention_mask=attn)[0][:, -2]
    allowed = torch.as_tensor(vocab.is_image(torch.arange(logits.size(-1)).numpy()))
    top3 = logits.masked_fill(~allowed, float("-inf")).topk(3).indices
    for i, r in enumerate(out):
        assert r[0] in top3[i].tolist()


def test_text_decoding_stops_at_the_stop_token_or_budget(model, vocab):
    prompts = [[vocab.doc, i] for i in range(8)]
    out = run(model, vocab, prompts, stop_tokens=[vocab.doc_end, vocab.eos], max_new_tokens=20, allow_images=False)
    for row in out:
        stops = [t for t in row if t in (vocab.doc_end, vocab.eos)]
        assert (len(row) == 20 and not stops) or (stops == [row[-1]])
        assert all(vocab.is_text(t) or t in (vocab.brk, vocab.doc_end, vocab.eos) for t in row)


def test_text_mode_follows_the_document_grammar(model, vocab):
    """Free generation: only text, <break>, whole images and the stop token; never <sep>, <doc>, sentinels."""
    out = run(model, vocab, [[vocab.doc, i] for i in range(6)], stop_tokens=[vocab.doc_end], max_new_tokens=40,
              config=DecodeConfig(temperature=2.0))
    for row in out:
        i = 0
        while i < len(row):
            if row[i] == vocab.img:
                assert vocab.is_image(row[i + 1:i + 1 + TPI]).all() and row[i + 1 + TPI] == vocab.img_end
                i += TPI + 2
                continue
            assert vocab.is_text(row[i]) or row[i] in (vocab.brk, vocab.doc_end)
            i += 1


class Biased(torch.nn.Module):
    """A model that strongly prefers one token: makes stop behaviour observable."""

    def __init__(self, model, token):
        super().__init__()
        self.inner, self.token, self.cfg = model, token, model.cfg

    def new_cache(self, *a):
        return self.inner.new_cache(*a)

    def forward(self, idx, logit_ranges=None, **kw):
        logits, loss = self.inner(idx, logit_ranges=logit_ranges, **kw)
        ids = [i for a, b in logit_ranges or [(0, logits.size(-1))] for i in range(a, b)]
        logits = logits.clone()
        if self.token in ids:  # the columns hold only the ids the grammar allows somewhere
            logits[..., ids.index(self.token)] += 50.0
        return logits, loss


def test_a_stop_token_ends_the_row_and_images_close_before_it(model, vocab):
    stopper = Biased(model, vocab.doc_end)
    out = run(stopper, vocab, [[vocab.doc, 1], [vocab.doc, 2, vocab.img]], stop_tokens=[vocab.doc_end],
              max_new_tokens=20)
    assert out[0] == [vocab.doc_end]
    # the second row was inside an image: the stop token must wait for the grid and </img>
    assert len(out[1]) == TPI + 2 and out[1][TPI] == vocab.img_end and out[1][-1] == vocab.doc_end


def test_an_image_is_only_opened_when_the_budget_can_close_it(model, vocab):
    opener = Biased(model, vocab.img)
    out = run(opener, vocab, [[vocab.doc, 1]], max_new_tokens=TPI + 3)
    row = out[0]
    assert row[0] == vocab.img and row[TPI + 1] == vocab.img_end
    assert vocab.img not in row[TPI + 2:]  # one token left: no second image
    assert len(row) == TPI + 3


def test_constraint_resumes_inside_an_open_image(vocab):
    prompt = [vocab.doc, vocab.img, *vocab.image_id([3, 4]).tolist()]
    c = ModalityConstraint(vocab, vocab.size, TPI, [prompt], [vocab.doc_end], True, False, "cpu")
    assert c.state == [IMAGE] and c.count == [2]
    c.update([int(vocab.image_id(5))])
    assert (~c.blocked(10)[0]).nonzero().flatten().tolist() == vocab.image_id(range(vocab.image_size)).tolist()
    c.update([int(vocab.image_id(6))])
    assert c.state == [CLOSE]
    assert (~c.blocked(10)[0]).nonzero().flatten().tolist() == [vocab.img_end]
    c.update([vocab.img_end])
    assert c.state == [TEXT] and c.blocked(TPI + 1)[0, vocab.img] and not c.blocked(TPI + 2)[0, vocab.img]
    c.update([vocab.doc_end])
    assert c.finished and (~c.blocked(10)[0]).nonzero().flatten().tolist() == [vocab.pad]


def test_bad_inputs_raise_clear_errors(model, vocab):
    with pytest.raises(ValueError, match="at least one token"):
        run(model, vocab, [[]])
    with pytest.raises(ValueError, match="unconditional"):
        run(model, vocab, image_prompts(vocab), config=DecodeConfig(method="cfg"))
    with pytest.raises(ValueError, match="context"):
        run(model, vocab, [[vocab.doc]], max_new_tokens=500)
    with pytest.raises(ValueError, match="method"):
        DecodeConfig(method="beam")
    with pytest.raises(ValueError, match="top_p"):
        DecodeConfig(top_p=0.0)


def test_repeated_prompts_share_one_prefill_and_match_separate_runs(model, vocab):
    p, q = [vocab.doc, 1, 2, 3, 4, 5], [vocab.doc, 6]
    kw = dict(config=DecodeConfig(method="greedy"), max_new_tokens=10, tokens_per_image=TPI)
    assert generate(model, vocab, [p, q, p, p], **kw) == [generate(model, vocab, [r], **kw)[0] for r in (p, q, p, p)]
