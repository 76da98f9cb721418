"""Decoding speed: our batched KV-cache generation vs HF transformers' LlamaForCausalLM.generate.

Both models have the same dims, vocabulary, batch and lengths (RMSNorm, rotary, SwiGLU, tied
embeddings, no biases: Llama is the same architecture) and decode a fixed number of tokens (no stop
token on either side), interleaved in one run so machine load hits both; each side's fastest of n runs
is reported. Ours runs its real decoding path (the CM3 modality constraint included) on the model as
`RAMM.load` serves it: on CPU its weights are packed once at load (`pack_weights`, a one-time cost like
loading). `--pack-per-call` times the library's `generate` on an unpacked model instead, which packs on
every call of >= 512 tokens. Rows: greedy decoding of distinct prompts; n image samples of one RA prompt
(two retrieved documents + caption), the `ramm generate image --n 8` workload, where ours prefills the
shared prompt once; the latency of one 64-token image at batch 1.

    .venv/bin/python bench/decode_throughput.py [--preset small --batch 8 --prompt 64 --new 64]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from ramm.config import DecodeConfig  # noqa: E402
from ramm.decoding.decoder import generate  # noqa: E402
from ramm.model.packing import pack_weights  # noqa: E402
from ramm.model.transformer import Transformer, TransformerConfig  # noqa: E402
from ramm.tokenizers.vocab import Vocabulary  # noqa: E402
from ramm.utils import pick_device  # noqa: E402

TOKENS_PER_IMAGE = 64  # EmojiBench's VQ grid (8 x 8)


def hf_twin(cfg: TransformerConfig):
    """An HF Llama with our model's dims (weights need not match: we time, not compare outputs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                     num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                     max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
                     tie_word_embeddings=cfg.tie_weights, attention_bias=False, mlp_bias=False,
                     pad_token_id=0, bos_token_id=1, eos_token_id=None)  # fixed lengths
    return LlamaForCausalLM(hf).eval()


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def best_of(n: int, ours, theirs, device: str) -> tuple[float, float]:
    """Fastest of n runs of each, interleaved: the host's noise (other tenants, frequency changes) only ever adds
    time, so the minimum is the steadiest estimate of each side's undisturbed cost (timeit's advice)."""
    a, b = [], []
    for _ in range(n):
        a.append(timed(ours, device))
        b.append(timed(theirs, device))
    return min(a), min(b)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", help="model size (EmojiBench demo: small)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per row")
    ap.add_argument("--new", type=int, default=64, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=15,
                    help="interleaved runs per side; the fastest counts (a shared host has minutes-long slow spells)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids OpenMP contention on a shared 2-core box)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--pack-per-call", action="store_true", help="do not pack the weights once at load (see above)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)

    vocab = Vocabulary(text_size=1024, image_size=512)
    cfg = TransformerConfig.preset(args.preset, vocab_size=vocab.size)
    ours = Transformer(cfg).eval().to(device)
    if not args.pack_per_call:
        pack_weights(ours)  # what RAMM.load does
    theirs = hf_twin(cfg).to(device)
    prompts = torch.randint(0, vocab.text_size, (args.batch, args.prompt))
    greedy = DecodeConfig(method="greedy")

    def run_ours():
        out = generate(ours, vocab, prompts.tolist(), tokens_per_image=TOKENS_PER_IMAGE, max_new_tokens=args.new,
                       config=greedy, allow_images=False)
        assert all(len(r) == args.new for r in out)

    hf_ids = prompts.to(device)

    def run_hf():
        with torch.no_grad():
            out = theirs.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), do_sample=False,
                                  max_new_tokens=args.new)
        assert out.shape == (args.batch, args.prompt + args.new)

    run_ours(), run_hf()  # warm up (allocator, HF generation config)
    t_ours, t_hf = best_of(args.repeats, run_ours, run_hf, device)
    n_tokens = args.batch * args.new
    ours_tps, hf_tps = n_tokens / t_ours, n_tokens / t_hf

    # the `ramm generate image --n 8` workload: n image samples of one RA prompt
    # (<doc> text <img> 64 codes </img> </doc> x2, <sep>, <doc> caption <img>)
    retrieved = [vocab.doc, *range(10, 18), vocab.img, *vocab.image_id(range(TOKENS_PER_IMAGE)).tolist(),
                 vocab.img_end, vocab.doc_end]
    ra_prompt = retrieved * 2 + [vocab.sep, vocab.doc, *range(10, 18), vocab.img]
    sampler = DecodeConfig(method="sample")
    gen = torch.Generator(device=device)
    hf_prompt = torch.tensor([ra_prompt], device=device)

    def images(n):
        out = generate(ours, vocab, [ra_prompt] * n, tokens_per_image=TOKENS_PER_IMAGE,
                       max_new_tokens=TOKENS_PER_IMAGE + 1, config=sampler, stop_after_image=True,
                       generator=gen.manual_seed(0))
        assert all(len(r) == TOKENS_PER_IMAGE + 1 for r in out)

    def images_hf(n):
        with torch.no_grad():
            theirs.generate(hf_prompt, attention_mask=torch.ones_like(hf_prompt), do_sample=True, top_k=0,
                            num_return_sequences=n, max_new_tokens=TOKENS_PER_IMAGE + 1)

    images(1), images_hf(1)
    t_img, t_img_hf, lat, lat_hf = (best_of(args.repeats, lambda: images(args.batch), lambda: images_hf(args.batch), device)
                                    + best_of(args.repeats, lambda: images(1), lambda: images_hf(1), device))
    img_tps, img_tps_hf = args.batch * (TOKENS_PER_IMAGE + 1) / t_img, args.batch * (TOKENS_PER_IMAGE + 1) / t_img_hf

    packing = "weights packed per call" if args.pack_per_call else "weights packed at load"
    setting = (f"{args.preset} ({cfg.n_layer}x{cfg.d_model}, V={cfg.vocab_size}), batch {args.batch}, "
               f"prompt {args.prompt}, new {args.new}, {device}, {packing}")
    peer = "HF LlamaForCausalLM.generate"
    emit([
        dict(bench="decode_throughput", metric="greedy decoding, distinct prompts", ours=ours_tps, peer_name=peer,
             peer=hf_tps, ratio=ours_tps / hf_tps, target=">= 1.5", unit="tokens/s", note=setting),
        dict(bench="decode_throughput", metric=f"{args.batch} sampled images of one {len(ra_prompt)}-token RA prompt",
             ours=img_tps, peer_name=peer + " (num_return_sequences)", peer=img_tps_hf, ratio=img_tps / img_tps_hf,
             target=">= 1.5", unit="tokens/s", note=f"{args.preset}, {device}, {packing}"),
        dict(bench="decode_throughput", metric=f"latency of one {TOKENS_PER_IMAGE}-token image, batch 1",
             ours=lat * 1000, peer_name=peer, peer=lat_hf * 1000, ratio=lat_hf / lat,
             target="-", unit="ms (ratio = peer/ours)",
             note=f"{len(ra_prompt)}-token RA prompt, {args.preset}, {device}, {packing}"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
