"""A tiny random Chameleon checkpoint saved the way transformers saves one (no weights are downloadable)."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "cat", "dog", "flag", "of", "the", "japan", "smiling", "face", "with", "hat"]
N_CODES = 16  # VQGAN codebook: 16x16 images -> 4x4 = 16 codes


def image_token_name(code: int) -> str:
    """Chameleon's spelling of image code c: IMGIMG, the digits as letters A..J, then Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(code)) + "Z"


def build_tokenizer(images: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<s>", "<pad>", "</s>", "<unk>"]
    names += [image_token_name(c) for c in range(N_CODES)] if images else []
    names += ["<eoss>", "<racm3:break>", "<image>"] + [f"<reserved{8706 + i:05d}>" for i in range(20)] + WORDS
    tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def vq_config():
    from transformers import ChameleonVQVAEConfig

    return ChameleonVQVAEConfig(resolution=16, base_channels=32, channel_multiplier=[1, 1, 1], num_res_blocks=1,
                                attn_resolutions=[], embed_dim=8, num_embeddings=N_CODES, latent_channels=32)


def make_checkpoint(directory: Path, images: bool = True, decoder: bool = True, seed: int = 0) -> Path:
    """config.json (model_type chameleon, vocabulary_map), model.safetensors, the tokenizer, decoder.safetensors."""
    from safetensors.torch import save_file
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    from ramm.tokenizers.chameleon import VQGANDecoder

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(images)
    vocab = tokenizer.get_vocab()
    cfg = ChameleonConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          vq_config=vq_config().to_dict(), vocabulary_map=vocab, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2)
    model = ChameleonForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # tiny random weights give near-uniform logits: sharpen them so argmax is stable
        model.lm_head.weight.normal_(0, 1.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if decoder:
        dec = VQGANDecoder(vq_config())
        save_file({f"decoder.{k}": v.contiguous() for k, v in dec.state_dict().items()}, directory / "decoder.safetensors")
    return directory
