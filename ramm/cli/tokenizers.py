"""`ramm train tokenizer` (VQ image tokenizer) and `ramm train text-tokenizer` (byte-level BPE)."""
from __future__ import annotations

from ramm.cli import add_runtime_args


def register(cli) -> None:
    p = cli.command("tokenizer", "train the VQ image tokenizer on a corpus' train split", group="train")
    p.add_argument("--corpus", required=True, help="any corpus `open_corpus` reads (directory, JSONL/CSV, COCO JSON, webdataset shards)")
    p.add_argument("--out", required=True, help="output dir: config.json + model.safetensors (+ checkpoint/)")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget; stops early with a checkpoint")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (also the cosine schedule's length)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--quantizer", choices=("vq", "fsq"), default="vq", help="EMA-codebook VQ or FSQ")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    p.add_argument("--grid", type=int, default=8, help="codes per side (tokens per image = grid**2)")
    p.add_argument("--channels", type=int, default=64, help="width of the first conv stage")
    p.add_argument("--codebook-size", type=int, default=512, help="VQ codebook size (FSQ: product of --fsq-levels)")
    p.add_argument("--fsq-levels", default="8,8,8", help="comma-separated FSQ levels")
    add_runtime_args(p, "continue from OUT/checkpoint")
    p.set_defaults(func=_run_image)

    p = cli.command("text-tokenizer", "train the byte-level BPE text tokenizer on a corpus' train split", group="train")
    p.add_argument("--corpus", required=True, help="corpus directory or file")
    p.add_argument("--out", required=True, help="output dir for tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size incl. 256 bytes and <pad>")
    p.set_defaults(func=_run_text)


def _load(corpus: str, image_size: int | None = None) -> list:
    from ramm.corpus import open_corpus
    return list(open_corpus(corpus, image_size=image_size))


def _run_image(args) -> int:
    import torch

    from ramm.tokenizers.image_tokenizer import ImageTokenizerConfig
    from ramm.training.tokenizer_recipe import split_docs, train_image_tokenizer
    from ramm.training.trainer import TrainerConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [int(v) for v in args.fsq_levels.split(",") if v.strip()]
    cfg = ImageTokenizerConfig(image_size=args.image_size, grid=args.grid, channels=args.channels,
                               quantizer=args.quantizer, codebook_size=args.codebook_size, fsq_levels=levels)
    tcfg = TrainerConfig(out_dir=args.out, steps=args.steps, max_minutes=args.minutes, batch_size=args.batch_size,
                         lr=args.lr, warmup_steps=min(100, args.steps // 10), weight_decay=0.0,
                         ckpt_every=200, log_every=20, device=args.device, resume=args.resume)
    docs = _load(args.corpus, args.image_size)
    train, test = split_docs(docs, "train"), split_docs(docs, "test")
    print(f"training on {len(train)} train documents; evaluating on {len(test)} test documents")
    model, metrics = train_image_tokenizer(train, cfg, tcfg, eval_docs=test)
    print(f"saved image tokenizer to {args.out} ({model.tokens_per_image} tokens/image, {model.codebook_size} codes)")
    if metrics.get("psnr") is not None:
        print(f"test PSNR {metrics['psnr']:.2f} dB | codebook usage {100 * metrics['usage']:.1f}% | "
              f"perplexity {metrics['perplexity']:.1f} | steps {metrics.get('step', tcfg.steps)}")
    return 0


def _run_text(args) -> int:
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.training.tokenizer_recipe import split_docs

    texts = [t for d in split_docs(_load(args.corpus), "train") for t in d.texts]
    if not texts:
        raise ValueError(f"corpus {args.corpus} has no train text to learn BPE merges from")
    tok = TextTokenizer.train(texts, vocab_size=args.vocab_size)
    tok.save_pretrained(args.out)
    n = sum(len(tok.encode(t)) for t in texts)
    print(f"saved {tok.vocab_size}-token BPE to {args.out}/tokenizer.json ({n / len(texts):.1f} tokens per text)")
    return 0
