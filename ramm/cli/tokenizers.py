"""`ramm train tokenizer` (VQ image tokenizer) and `ramm train text-tokenizer` (byte-level BPE).

Flags and `--config FILE` are the fields of `ramm.config.ImageTokenizerTrainConfig` / `TextTokenizerTrainConfig`
(`--model.grid`, `--trainer.steps`, `--split.seed`, ...).
"""
from __future__ import annotations

from ramm.cli import corpus_documents
from ramm.config import ImageTokenizerTrainConfig, TextTokenizerTrainConfig


def register(cli) -> None:
    cli.config_command("tokenizer", "train the VQ image tokenizer on a corpus' train split",
                       ImageTokenizerTrainConfig, _run_image, group="train")
    cli.config_command("text-tokenizer", "train the byte-level BPE text tokenizer on a corpus' train split",
                       TextTokenizerTrainConfig, _run_text, group="train")


def _run_image(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.training.tokenizer_recipe import train_image_tokenizer

    docs = list(corpus_documents(cfg.corpus, cfg.split, ["train", "test"], image_size=cfg.model.image_size,
                                 strict=cfg.strict))
    train, test = list(cfg.split.select(docs, "train")), list(cfg.split.select(docs, "test"))
    print(f"training on {len(train)} train documents; evaluating on {len(test)} test documents")
    model, metrics = train_image_tokenizer(train, cfg.model, cfg.trainer, eval_docs=test)
    print(f"saved image tokenizer to {cfg.out} ({model.tokens_per_image} tokens/image, {model.codebook_size} codes)")
    if metrics.get("psnr") is not None:
        print(f"test PSNR {metrics['psnr']:.2f} dB | codebook usage {100 * metrics['usage']:.1f}% | "
              f"perplexity {metrics['perplexity']:.1f} | steps {metrics.get('step', cfg.trainer.steps)}")
    return 0


def _run_text(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.tokenizers.text_tokenizer import TextTokenizer

    texts = [t for d in corpus_documents(cfg.corpus, cfg.split, ["train"], strict=cfg.strict) for t in d.texts]
    if not texts:
        raise ValueError(f"corpus {cfg.corpus} has no train text to learn BPE merges from")
    tok = TextTokenizer.train(texts, vocab_size=cfg.vocab_size)
    tok.save_pretrained(cfg.out)
    n = sum(len(tok.encode(t)) for t in texts)
    print(f"saved {tok.vocab_size}-token BPE to {cfg.out}/tokenizer.json ({n / len(texts):.1f} tokens per text)")
    return 0
