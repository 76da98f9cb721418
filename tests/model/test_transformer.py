import contextlib
import json

import pytest
import torch

from ramm.model.packing import packed_weights
from ramm.model.transformer import Transformer, TransformerConfig

torch.set_num_threads(1)
V = 97


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig.preset("tiny", vocab_size=V, max_seq_len=64, **kw)).eval()


def test_changing_a_later_token_never_changes_an_earlier_logit():
    model = tiny()
    idx = torch.randint(0, V, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % V
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_logits_equal_full_recompute():
    model = tiny()
    idx = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2, 32)
        parts = [model(idx[:, :10], cache=cache)[0]]
        parts += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(10, 24)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 24


def test_left_padded_batch_with_cache_matches_each_row_alone():
    model = tiny()
    rows = [torch.randint(0, V, (n,)) for n in (7, 12)]
    steps = torch.randint(0, V, (2, 5))
    pad = max(len(r) for r in rows)
    idx = torch.stack([torch.cat([torch.zeros(pad - len(r), dtype=torch.long), r]) for r in rows])
    am = torch.stack([torch.arange(pad) >= pad - len(r) for r in rows])
    with torch.no_grad():
        cache = model.new_cache(2, 32)
        out = [model(idx, cache=cache, attention_mask=am)[0][:, -1]]
        for t in range(5):
            am = torch.cat([am, torch.ones(2, 1, dtype=torch.bool)], 1)
            out.append(model(steps[:, t:t + 1], cache=cache, attention_mask=am)[0][:, -1])
        batched = torch.stack(out, 1)  # (B, 6, V)
        for b, r in enumerate(rows):
            alone, _ = model(torch.cat([r, steps[b]])[None])
            torch.testing.assert_close(batched[b], alone[0, len(r) - 1:], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all()


def test_last_only_gives_the_last_logits_and_unwritten_cache_slots_are_never_read():
    model = tiny()
    idx = torch.randint(0, V, (2, 10))
    am = torch.ones(2, 10, dtype=torch.bool)
    am[0, :3] = False  # a left-padded row takes the masked path
    with torch.no_grad():
        full, _ = model(idx, attention_mask=am)
        last, _ = model(idx, attention_mask=am, last_only=True)
        assert last.shape == (2, 1, V)
        torch.testing.assert_close(last[:, 0], full[:, -1])
        cache = model.new_cache(2, 32)
        cache.k.fill_(float("nan")), cache.v.fill_(float("nan"))  # what an uninitialised buffer may hold
        first, _ = model(idx, cache=cache, attention_mask=am, last_only=True)
        step, _ = model(idx[:, :1], cache=cache, attention_mask=torch.cat([am, am[:, -1:]], 1))
    torch.testing.assert_close(first[:, 0], full[:, -1])
    assert torch.isfinite(step).all()
    with pytest.raises(ValueError, match="last_only"):
        model(idx, idx, last_only=True)


def test_logit_ranges_give_those_columns_of_the_full_logits():
    model = tiny()
    idx = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        full, _ = model(idx)
        for packed in (False, True):
            with packed_weights(model) if packed else contextlib.nullcontext():
                part, _ = model(idx, logit_ranges=[(3, 9), (V - 4, V)])
            torch.testing.assert_close(part, torch.cat([full[..., 3:9], full[..., V - 4:]], -1), atol=1e-5, rtol=1e-5)
        for bad in ([(5, 3)], [(0, V + 1)], [(-1, 4)], []):
            with pytest.raises(ValueError, match="logit_ranges"):
                model(idx, logit_ranges=bad)
    with pytest.raises(ValueError, match="logit_ranges"):
        model(idx, idx, logit_ranges=[(0, 4)])


def test_save_load_round_trip(tmp_path):
    for tie in (True, False):
        model = tiny(tie_weights=tie)
        model.save_pretrained(tmp_path / str(tie))
        again = Transformer.from_pretrained(tmp_path / str(tie)).eval()
        idx = torch.randint(0, V, (1, 9))
        torch.testing.assert_close(model(idx)[0], again(idx)[0])
        assert (again.lm_head.weight is again.embed.weight) == tie


def test_loss_weights_mean_over_weighted_non_ignored_targets():
    model = tiny()
    idx = torch.randint(0, V, (1, 6))
    tgt = torch.randint(0, V, (1, 6))
    tgt[0, 0] = -100
    w = torch.tensor([[5.0, 0.1, 0.1, 1.0, 1.0, 1.0]])
    logits, loss = model(idx, tgt, w)
    ce = torch.nn.functional.cross_entropy(logits[0, 1:], tgt[0, 1:], reduction="none")
    torch.testing.assert_close(loss, (ce * w[0, 1:]).sum() / w[0, 1:].sum())
    _, unweighted = model(idx, tgt)
    torch.testing.assert_close(unweighted, ce.mean())


def test_tiny_loss_falls_on_a_repeating_pattern():
    torch.manual_seed(0)
    model = tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.arange(33).repeat(4, 1) % 11
    first = None
    for _ in range(40):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.3 * first


def test_resize_token_embeddings_keeps_old_rows_and_ties():
    model = tiny()
    old = model.embed.weight.detach().clone()
    model.resize_token_embeddings(V + 5)
    assert model.cfg.vocab_size == V + 5 and model.lm_head.weight is model.embed.weight
    torch.testing.assert_close(model.embed.weight[:V], old)
    logits, _ = model(torch.tensor([[V + 4, 3]]))
    assert logits.shape == (1, 2, V + 5)


def test_bad_input_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="d_model"):
        TransformerConfig(vocab_size=10, n_head=3, d_model=64)
    with pytest.raises(ValueError, match="unknown model size"):
        TransformerConfig.preset("huge", vocab_size=10)
    model = tiny()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(FileNotFoundError):
        Transformer.from_pretrained(tmp_path)


def test_image_grid_positions_are_relative_to_img_and_match_under_the_cache():
    open_id, tpi = 5, 4
    model = tiny(image_tokens=tpi, image_open_id=open_id)
    with torch.no_grad():
        model.image_pos.weight.normal_()
    # a code's grid cell is its distance from the latest <img>, not its absolute position
    a = torch.tensor([[1, 2, open_id, 10, 11, 12, 13, 6]])
    b = torch.tensor([[1, 2, 3, 4, open_id, 10, 11, 12, 13, 6]])
    ga, gb = model._grid(a, 0, None)[0], model._grid(b, 0, None)[0]
    assert ga[3:7].tolist() == gb[5:9].tolist() == [0, 1, 2, 3] and ga[2] == gb[4] == -1
    outside = lambda g: bool(((g < -1) | (g >= tpi)).all())  # noqa: E731
    assert outside(ga[[0, 1, 7]]) and outside(gb[[0, 1, 2, 3, 9]])
    # incremental decoding across an <img> boundary equals the full recompute
    idx = torch.tensor([[7, open_id, 10, 11, 12, 13, 6, open_id, 20, 21, 22, 23]] * 2)
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2, 16)
        parts = [model(idx[:, :2], cache=cache)[0]] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(2, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_packed_weights_decode_equals_plain_and_never_goes_stale():
    from ramm.model.packing import Linear, packed_weights

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=50, max_seq_len=32)).eval()
    idx = torch.randint(0, 50, (3, 9))
    with torch.no_grad():
        plain = model(idx)[0]
        with packed_weights(model):
            assert all(m._packed is not None for m in model.modules() if isinstance(m, Linear))
            packed = model(idx)[0]
        assert torch.allclose(packed, plain, atol=1e-5)
        assert all(m._packed is None for m in model.modules() if isinstance(m, Linear))  # dropped on exit
        model.blocks[0].mlp.proj.weight.data.mul_(2)  # a .data write does not bump the version counter
        fresh = model(idx)[0]
        assert not torch.allclose(fresh, plain, atol=1e-5)
        with packed_weights(model):
            assert torch.allclose(model(idx)[0], fresh, atol=1e-5)
    with packed_weights(model):  # with autograd on, the layers use F.linear and gradients reach the weights
        model(idx)[0].sum().backward()
    assert model.lm_head.weight.grad is not None and model.blocks[0].attn.qkv.weight.grad is not None


def test_a_kept_pack_follows_in_place_weight_changes_and_outlives_nested_blocks():
    from ramm.model.packing import Linear, pack_weights, packed_weights, unpack_weights

    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=50, max_seq_len=32)).eval()
    idx = torch.randint(0, 50, (3, 9))
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    kept = pack_weights(model)  # what RAMM.load does
    assert set(map(id, kept)) == set(map(id, linears))
    with torch.no_grad():
        before = model(idx)[0]
        with packed_weights(model):  # nested: packs nothing, and must not drop the kept packs on exit
            pass
        assert all(m._packed is not None for m in linears)
        qkv = model.blocks[0].attn.qkv
        packed_copy = qkv._packed
        qkv.weight.mul_(2)  # an in-place change bumps the version: the stale pack must not be used
        changed = model(idx)[0]
        assert not torch.allclose(changed, before, atol=1e-4)
        unpack_weights(kept)
        torch.testing.assert_close(model(idx)[0], changed)  # the plain F.linear result
        assert pack_weights(model) and qkv._packed is not packed_copy
        torch.testing.assert_close(model(idx)[0], changed, atol=1e-5, rtol=1e-5)


def test_logits_equal_hf_llama_with_the_same_weights():
    """Same architecture as LLaMA (RMSNorm, rotary on halves, SwiGLU, tied embeddings): copying our weights
    into transformers' LlamaForCausalLM must give our logits, with and without left padding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = tiny()
    c = m.cfg
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
                                      num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                                      num_key_value_heads=c.n_head, max_position_embeddings=c.max_seq_len,
                                      rope_theta=c.rope_theta, rms_norm_eps=c.norm_eps, tie_word_embeddings=True,
                                      attention_bias=False, mlp_bias=False)).eval()
    ours = m.state_dict()
    state = {"model.embed_tokens.weight": ours["embed.weight"], "model.norm.weight": ours["norm.weight"],
             "lm_head.weight": ours["embed.weight"]}
    for i in range(c.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        wq, wk, wv = ours[p + "attn.qkv.weight"].chunk(3)
        gate, up = ours[p + "mlp.gate_up.weight"].chunk(2)
        state.update({q + "self_attn.q_proj.weight": wq, q + "self_attn.k_proj.weight": wk,
                      q + "self_attn.v_proj.weight": wv, q + "self_attn.o_proj.weight": ours[p + "attn.proj.weight"],
                      q + "mlp.gate_proj.weight": gate, q + "mlp.up_proj.weight": up,
                      q + "mlp.down_proj.weight": ours[p + "mlp.proj.weight"],
                      q + "input_layernorm.weight": ours[p + "norm1.weight"],
                      q + "post_attention_layernorm.weight": ours[p + "norm2.weight"]})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k]
    idx = torch.randint(0, c.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)
        am = torch.ones(2, 12, dtype=torch.bool)
        am[1, :5] = False  # row 1 left-padded: positions count its real tokens only, as HF's position_ids
        pos = (am.long().cumsum(-1) - 1).clamp_min(0)
        ref = hf(idx, attention_mask=am.long(), position_ids=pos).logits
        torch.testing.assert_close(m(idx, attention_mask=am)[0][am], ref[am], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"text_tokenizer": 3, "image_tokenizer": "x"}'])
def test_a_generator_json_of_the_wrong_type_names_the_file(tmp_path, content):
    from ramm.model.bundle import bundle_info
    (tmp_path / "generator.json").write_text(content)
    with pytest.raises(ValueError, match="generator.json: "):
        bundle_info(tmp_path)


def test_tampered_model_folders_name_the_file(tmp_path):
    from ramm.model.transformer import Transformer, TransformerConfig
    from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
    gen = tmp_path / "gen"
    Transformer(TransformerConfig.preset("tiny", vocab_size=31, max_seq_len=16)).save_pretrained(gen)
    weights = (gen / "model.safetensors").read_bytes()
    (gen / "model.safetensors").write_bytes(weights[:500])
    with pytest.raises(ValueError, match="gen/model.safetensors: not a readable safetensors file"):
        Transformer.from_pretrained(gen)
    Transformer(TransformerConfig.preset("tiny", vocab_size=40, max_seq_len=16)).save_pretrained(tmp_path / "other")
    (gen / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="gen/model.safetensors does not fit its config .*size mismatch"):
        Transformer.from_pretrained(gen)
    cfg = json.loads((gen / "config.json").read_text())
    (gen / "config.json").write_text(json.dumps({**cfg, "n_layerz": 2}))
    with pytest.raises(ValueError, match="gen/config.json: unknown field n_layerz"):
        Transformer.from_pretrained(gen)
    tok = tmp_path / "tok"
    ImageTokenizer(ImageTokenizerConfig(image_size=16, grid=4, channels=16, latent_dim=16, codebook_size=32)).save_pretrained(tok)
    (tok / "config.json").write_text((tok / "config.json").read_text().replace('"grid"', '"gird"'))
    with pytest.raises(ValueError, match="tok/config.json: unknown field gird"):
        ImageTokenizer.from_pretrained(tok)
