import pytest
import torch
from safetensors.torch import save_file

from ramm.tokenizers.chameleon import ChameleonImageTokenizer, VQGANDecoder

torch.set_num_threads(1)


def _save_tiny(tmp_path, with_decoder=True):
    """A randomly initialised 16x16 -> 8x8 Chameleon VQGAN saved the way transformers saves one."""
    from transformers import ChameleonVQVAE, ChameleonVQVAEConfig

    torch.manual_seed(0)
    cfg = ChameleonVQVAEConfig(resolution=16, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
                               attn_resolutions=[8], embed_dim=8, num_embeddings=16, latent_channels=32)
    vqvae = ChameleonVQVAE(cfg)
    vqvae.save_pretrained(tmp_path)
    if with_decoder:
        dec = VQGANDecoder(cfg)
        save_file({f"decoder.{k}": v.contiguous() for k, v in dec.state_dict().items()},
                  tmp_path / "decoder.safetensors")
    return vqvae


def test_encode_matches_transformers_and_decode_inverts_shapes(tmp_path):
    vqvae = _save_tiny(tmp_path)
    tok = ChameleonImageTokenizer.from_pretrained(tmp_path)
    assert (tok.grid, tok.tokens_per_image, tok.codebook_size) == (8, 64, 16)
    x = torch.rand(2, 3, 16, 16)
    codes = tok.encode(x)
    assert codes.shape == (2, 64) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 16
    expected = vqvae.eval().encode(x * 2 - 1).image_tokens.view(2, -1)
    assert torch.equal(codes, expected)
    out = tok.decode(codes)
    assert out.shape == (2, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(tok.decode(codes), out)


def test_decoder_weights_load_from_the_directory(tmp_path):
    _save_tiny(tmp_path)
    tok = ChameleonImageTokenizer.from_pretrained(tmp_path)
    fresh = VQGANDecoder(tok.vqvae.config)  # a different random init: loading must have replaced it
    saved = tok.decoder.state_dict()
    assert set(saved) == set(fresh.state_dict())
    assert any(not torch.equal(saved[k], fresh.state_dict()[k]) for k in saved if k.endswith("weight"))
    from safetensors.torch import load_file
    on_disk = load_file(tmp_path / "decoder.safetensors")
    assert all(torch.equal(saved[k], on_disk[f"decoder.{k}"]) for k in saved)


def test_without_decoder_weights_encodes_but_refuses_to_decode(tmp_path):
    _save_tiny(tmp_path, with_decoder=False)
    tok = ChameleonImageTokenizer.from_pretrained(tmp_path)
    codes = tok.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no decoder"):
        tok.decode(codes)


def test_bad_inputs_raise_value_error(tmp_path):
    _save_tiny(tmp_path)
    tok = ChameleonImageTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="images must be"):
        tok.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="tokens must be"):
        tok.decode(torch.zeros(1, 63, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must lie"):
        tok.decode(torch.full((1, 64), 16))
    with pytest.raises(FileNotFoundError):
        ChameleonImageTokenizer.from_pretrained(tmp_path / "missing")
