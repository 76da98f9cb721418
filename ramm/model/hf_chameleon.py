"""Chameleon / Anole weights (transformers' `ChameleonForConditionalGeneration`) as a ramm generator.

ramm's decoder, CM3 format and trainer speak ramm's `Vocabulary` layout (text, image codes, specials);
a Chameleon checkpoint has its own: BPE text, image codes as `IMGIMG..` BPE entries
(`ChameleonImageVocabularyMapping`), `<racm3:break>` / `<eoss>` around an image, and unused
`<reserved#####>` tokens. `ChameleonVocab` maps every ramm id onto one checkpoint id, so the batched
modality-constrained decoder, CFG and CD-K (`ramm.decoding.decoder`) and RA-CM3's weighted loss run
unchanged over the HF model: `ChameleonGenerator.forward` embeds the mapped ids and reads the LM head's
logits at the mapped columns. transformers' own `forward` sets image-token logits to the dtype's minimum
(Chameleon 7B/30B were released unable to emit images); the LM head is read directly, so Anole-style
weights generate images.

RA-CM3's markers (`<doc>`, `</doc>`, `<sep>`, `<infill>`, `<break>`, `<mask:i>`) take reserved tokens in id
order: the released weights never trained them, RA fine-tuning (`ramm.training.chameleon_recipe`) does.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ramm.model.transformer import weighted_cross_entropy
from ramm.tokenizers.chameleon import ChameleonImageTokenizer, read_decoder
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.vocab import SPECIALS, Vocabulary
from ramm.utils import pick_device

log = logging.getLogger(__name__)

RESERVED = re.compile(r"<reserved\d+>")
DECODER_FILE = "decoder.safetensors"  # the VQGAN decoder (transformers keeps only the encoder): decoder.* tensors
DECODER_PREFIXES = ("model.vqmodel.decoder.", "decoder.")
# ramm roles a checkpoint may already have a token for; the rest take reserved tokens
NAMED_ROLES = {"<img>": ("boi_token", "<racm3:break>"), "</img>": ("eoi_token", "<eoss>"),
               "<pad>": ("pad_token", "<pad>"), "<eos>": ("eos_token", "</s>")}


def is_chameleon_checkpoint(directory: str | Path) -> bool:
    """A directory whose config.json says model_type "chameleon"."""
    config = Path(directory) / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") == "chameleon"
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class ChameleonVocab:
    """ramm's `Vocabulary` over a Chameleon checkpoint: `to_hf[ramm id]` is the checkpoint's id."""

    vocab: Vocabulary
    to_hf: np.ndarray  # (vocab.size,) int64
    has_images: bool  # the checkpoint's vocabulary holds image tokens

    @classmethod
    def from_checkpoint(cls, vocabulary_map: dict[str, int], tokenizer, n_sentinels: int = 8) -> "ChameleonVocab":
        # lazy: transformers (a slow import) only for Chameleon checkpoints
        from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

        mapping = ChameleonImageVocabularyMapping(vocabulary_map)
        img2bpe = mapping.img2bpe
        if img2bpe and sorted(img2bpe) != list(range(len(img2bpe))):
            raise ValueError(f"the checkpoint's image tokens do not cover codes 0..{len(img2bpe) - 1}")
        reserved = iter(sorted(i for name, i in vocabulary_map.items() if RESERVED.fullmatch(name)))
        role: dict[str, int] = {}
        for name in SPECIALS:
            attr, default = NAMED_ROLES.get(name, (None, None))
            token = (getattr(tokenizer, attr, None) if attr else None) or default
            if token in vocabulary_map and vocabulary_map[token] not in role.values():
                role[name] = vocabulary_map[token]
            else:
                role[name] = next(reserved, None)
        sentinels = [next(reserved, None) for _ in range(n_sentinels)]
        missing = [n for n, i in role.items() if i is None] + [f"<mask:{j}>" for j, i in enumerate(sentinels) if i is None]
        if missing:
            raise ValueError(f"the checkpoint has too few <reserved#####> tokens for ramm's markers {missing}")
        taken = set(role.values()) | set(sentinels) | set(img2bpe.values())
        skip = {vocabulary_map.get("<image>")}  # transformers' placeholder for an image's features
        text = sorted(i for name, i in vocabulary_map.items()
                      if i not in taken and i not in skip and not RESERVED.fullmatch(name))
        # a vocabulary without image tokens keeps one image slot (Vocabulary needs one), mapped to a text id;
        # `has_images` is False and image tasks are refused before decoding
        codes = [img2bpe[c] for c in range(len(img2bpe))] or [text[0]]
        vocab = Vocabulary(text_size=len(text), image_size=len(codes), n_sentinels=n_sentinels)
        to_hf = np.array(text + codes + [role[n] for n in SPECIALS] + sentinels, dtype=np.int64)
        assert len(to_hf) == vocab.size
        return cls(vocab, to_hf, bool(img2bpe))


class ChameleonText:
    """The checkpoint's text tokenizer in ramm ids (`CM3Format`'s text tokenizer)."""

    def __init__(self, tokenizer, cv: ChameleonVocab):
        self.tokenizer, self.cv = tokenizer, cv
        self.vocab_size = cv.vocab.text_size
        self.from_hf = {int(h): i for i, h in enumerate(cv.to_hf[:cv.vocab.text_size])}

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        try:
            return [self.from_hf[i] for i in ids]
        except KeyError as e:
            raise ValueError(f"text {text!r} tokenizes to id {e.args[0]} "
                             f"({self.tokenizer.convert_ids_to_tokens(e.args[0])!r}), not a text token") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(self.cv.to_hf[i]) for i in ids])


@dataclass(frozen=True)
class BackendConfig:
    """What ramm's decoder reads of a model's config."""

    vocab_size: int  # ramm ids the model scores
    max_seq_len: int  # the checkpoint's context


class HFCache:
    """transformers' DynamicCache behind the two things ramm's decoder asks of a cache."""

    def __init__(self, cache):
        self.hf = cache

    @property
    def length(self) -> int:
        return self.hf.get_seq_length()

    def reorder(self, index: torch.Tensor) -> None:
        self.hf.reorder_cache(index)


class ChameleonGenerator(nn.Module):
    """`forward(idx, targets=None, ...) -> (logits, loss)` in ramm ids over a ChameleonForConditionalGeneration."""

    def __init__(self, hf_model, cv: ChameleonVocab):
        super().__init__()
        self.hf, self.cv = hf_model, cv
        # the VQ-VAE only tokenizes images: the LM loss never reaches it (and DDP wants no unused trainables)
        hf_model.model.vqmodel.requires_grad_(False)
        self.register_buffer("to_hf", torch.as_tensor(cv.to_hf), persistent=False)
        self.cfg = BackendConfig(cv.vocab.size, hf_model.config.max_position_embeddings)
        self._peft = None

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> HFCache:
        # lazy: transformers (a slow import) only for Chameleon checkpoints
        from transformers import DynamicCache

        if (max_len or 0) > self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the checkpoint's context of {self.cfg.max_seq_len}")
        return HFCache(DynamicCache(config=self.hf.config))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_weights: torch.Tensor | None = None,
                cache: HFCache | None = None, attention_mask: torch.Tensor | None = None, last_only: bool = False,
                logit_ranges: Sequence[tuple[int, int]] | None = None):
        """As `ramm.model.transformer.Transformer.forward`: logits over ramm ids (or the `logit_ranges` columns);
        the loss is RA-CM3's weighted cross-entropy over the checkpoint's whole vocabulary."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        S = past + T
        if S > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {S} tokens exceeds the checkpoint's context of {self.cfg.max_seq_len}")
        if (last_only or logit_ranges is not None) and targets is not None:
            raise ValueError("last_only and logit_ranges drop logits a loss needs; pass targets or them, not both")
        position_ids = None
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask must be (B, S) = ({B}, {S}), got {tuple(attention_mask.shape)}")
            # positions count real tokens only, so a left-padded row sees the positions it has alone
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, past:]
            attention_mask = attention_mask.long()
        out = self.hf.model(input_ids=self.to_hf[idx], attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache.hf if cache is not None else None, use_cache=cache is not None)
        h = out.last_hidden_state
        if last_only:
            h = h[:, -1:]
        full = self.hf.lm_head(h)  # (B, T, checkpoint vocabulary): no image-token masking
        loss = None
        if targets is not None:
            hf_targets = torch.where(targets.eq(-100), targets, self.to_hf[targets.clamp_min(0)])
            loss = weighted_cross_entropy(full, hf_targets, loss_weights)
        cols = self.to_hf if logit_ranges is None else torch.cat([self.to_hf[a:b] for a, b in logit_ranges])
        return full[..., cols], loss

    def add_lora(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> None:
        """Freeze the weights and train LoRA adapters on the attention projections (peft)."""
        try:
            # lazy: peft is optional (pip install ramm[lora])
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("LoRA fine-tuning needs peft: pip install peft") from None
        # get_peft_model swaps the target layers of self.hf in place; the wrapper is kept (unregistered) to merge
        self._peft = get_peft_model(self.hf, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                        target_modules=list(targets)))

    def save_pretrained(self, directory: str | Path, tokenizer=None, source: str | Path | None = None) -> None:
        """A directory transformers loads (LoRA adapters merged in), with the tokenizer and `source`'s VQGAN decoder."""
        directory = Path(directory)
        if self._peft is not None:
            self.hf = self._peft.merge_and_unload()
            self._peft = None
        self.hf.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        if source is not None and (Path(source) / DECODER_FILE).is_file() and \
                Path(source).resolve() != directory.resolve():
            shutil.copy2(Path(source) / DECODER_FILE, directory / DECODER_FILE)


def check_checkpoint(directory: str | Path) -> Path:
    """The directory, or a ValueError naming what is missing for it to be a Chameleon checkpoint."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise ValueError(f"{d} is not a transformers checkpoint: no config.json")
    model_type = json.loads((d / "config.json").read_text()).get("model_type")
    if model_type != "chameleon":
        raise ValueError(f"{d} is not a Chameleon checkpoint: config.json has model_type {model_type!r}, "
                         f"not 'chameleon'")
    if not any(d.glob("*.safetensors")):
        raise ValueError(f"{d} has no *.safetensors weights")
    if not (d / "tokenizer.json").is_file() and not (d / "tokenizer_config.json").is_file():
        raise ValueError(f"{d} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return d


def _image_tokenizer(model, d: Path, cv: ChameleonVocab):
    """(ChameleonImageTokenizer over the model's own VQ-VAE or None, why image tasks are unavailable or None)."""
    from safetensors import safe_open

    if not cv.has_images:
        return None, f"{d}: the checkpoint's vocabulary has no image tokens (no IMGIMG* entries in vocabulary_map)"
    files = sorted(d.glob("*.safetensors"))
    keys = set()
    for f in files:
        with safe_open(f, "pt") as st:
            keys.update(st.keys())
    if not any(k.startswith("model.vqmodel.encoder.") for k in keys):
        return None, f"{d}: no VQGAN weights (model.vqmodel.encoder.* tensors) in its safetensors files"
    prefix = next((p for p in DECODER_PREFIXES if any(k.startswith(p) for k in keys)), None)
    decoder = read_decoder(model.model.vqmodel.config, files, prefix) if prefix else None
    tok = ChameleonImageTokenizer(model.model.vqmodel, decoder and decoder.to(next(model.parameters()).device))
    if tok.codebook_size != cv.vocab.image_size:
        return None, f"{d}: VQGAN has {tok.codebook_size} codes, the vocabulary {cv.vocab.image_size} image tokens"
    if decoder is None:  # encoding (RA fine-tuning, image queries) still works
        return tok, (f"{d}: no VQGAN decoder weights (decoder.* tensors in {DECODER_FILE}, or "
                     f"model.vqmodel.decoder.*): transformers keeps only the encoder; see docs/chameleon.md")
    return tok, None


def load_chameleon(directory: str | Path, device: str | None = None, dtype: torch.dtype | None = None):
    """(ChameleonGenerator, CM3Format, info) for a transformers Chameleon / Anole directory.

    info["images_unavailable"] says why image tasks are refused (None when they work): no image tokens
    in the vocabulary, no VQGAN weights, or no VQGAN decoder."""
    # lazy: transformers (a slow import) only for Chameleon checkpoints
    from transformers import AutoTokenizer, ChameleonForConditionalGeneration

    # lazy: import cycle, ramm.model.bundle imports this module to load Chameleon checkpoints
    from ramm.model.bundle import INFO

    d = check_checkpoint(directory)
    device = pick_device(device)
    hf = ChameleonForConditionalGeneration.from_pretrained(d, dtype=dtype or torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(d)
    if not hf.config.vocabulary_map:
        raise ValueError(f"{d}/config.json has no vocabulary_map (transformers' Chameleon conversion writes one)")
    cv = ChameleonVocab.from_checkpoint(hf.config.vocabulary_map, tokenizer)
    model = ChameleonGenerator(hf, cv).to(device).eval()
    image_tok, why = _image_tokenizer(hf, d, cv)
    tpi = image_tok.tokens_per_image if image_tok is not None else _tokens_per_image(hf.config.vq_config)
    fmt = CM3Format(cv.vocab, ChameleonText(tokenizer, cv), image_tok, tokens_per_image=tpi)
    saved = json.loads((d / INFO).read_text()) if (d / INFO).is_file() else {}  # written by RA fine-tuning
    fmt.alpha = saved.get("alpha", fmt.alpha)
    info = {"backend": "chameleon", "memory": saved.get("memory"), "alpha": fmt.alpha, "images_unavailable": why,
            "tokenizer": tokenizer, "source": str(d)}
    return model, fmt, info


def _tokens_per_image(vq) -> int:
    return (vq.resolution // 2 ** (len(vq.channel_multiplier) - 1)) ** 2
