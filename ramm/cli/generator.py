"""`ramm train generator`: the RA-CM3 generator (--retrieval on) or its vanilla baseline (--retrieval off)."""
from __future__ import annotations

from ramm.cli import add_runtime_args


def register(cli) -> None:
    p = cli.command("generator", "train the retrieval-augmented CM3 generator (or the no-retrieval baseline)",
                    group="train")
    p.add_argument("--corpus", required=True, help="corpus directory (EmojiBench); main documents = its train split")
    p.add_argument("--memory", required=True, help="memory directory (ramm memory build)")
    p.add_argument("--tokenizer", required=True, help="image tokenizer directory")
    p.add_argument("--text-tokenizer", required=True, help="text tokenizer directory")
    p.add_argument("--out", required=True, help="output directory for the generator, checkpoints, metrics, eval.json")
    p.add_argument("--size", default="small", help="model preset: tiny, small, medium, base, large")
    p.add_argument("--retrieval", choices=("on", "off"), default="on", help="off: the baseline, k = 0 always")
    p.add_argument("--dropout", type=float, default=0.0, help="residual/attention dropout of the model")
    p.add_argument("--copy-dim", type=int, default=64,
                   help="width of the copy (pointer) head over the retrieved documents' tokens (0: none)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (the cosine schedule's length)")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget; stops early with a checkpoint")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=100, help="linear warmup steps")
    p.add_argument("--eval-every", type=int, default=0, help="steps between val evaluations (0: at the end)")
    p.add_argument("--eval-limit", type=int, default=0, help="documents per split in evaluations (0: all)")
    p.add_argument("--k", default="0,1,2", help="retrieved documents per example, drawn from these")
    p.add_argument("--diversity", type=float, default=0.9, help="skip candidates more relevant than this; <0 = off")
    p.add_argument("--no-exempt-partner", action="store_true",
                   help="apply the diversity threshold to the leave-one-out partner too (other style, same concept)")
    p.add_argument("--query-dropout", type=float, default=0.2, help="fraction of the text query's words dropped")
    p.add_argument("--alpha", type=float, default=0.1, help="loss weight on retrieved tokens")
    p.add_argument("--max-len", type=int, default=512, help="longest training sequence")
    p.add_argument("--query", choices=("text", "image", "both"), default="both",
                   help="what retrieves a training example's documents: its text, its image, or either (50/50)")
    p.add_argument("--augment", type=float, default=0.0,
                   help="chance that an example with retrieved documents shows all its images in one joint view "
                        "(flip/rotation x channel rotation), so copying from retrieval pays on training concepts too")
    p.add_argument("--views", type=int, default=8, help="number of joint views for --augment (view 0 = identity)")
    p.add_argument("--pseudo-names", type=float, default=0.0,
                   help="chance that an example whose retrieved documents hold its concept's other rendering gets a "
                        "made-up concept name (in both), so only the retrieved image tells what to draw")
    p.add_argument("--mmr", type=float, default=0.0,
                   help="text queries pick retrieved documents by maximal marginal relevance with this redundancy "
                        "weight (0: top-k by relevance)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and masks")
    add_runtime_args(p, "continue from OUT/checkpoint")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import torch

    from ramm.training.generator_recipe import GeneratorConfig, train_generator
    from ramm.training.ra_data import RAConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ks = tuple(int(k) for k in args.k.split(",") if k.strip())
    except ValueError:
        raise ValueError(f"--k must be comma-separated integers, got {args.k!r}") from None
    ra = RAConfig(k_choices=ks, n_candidates=max(2, *ks), diversity=None if args.diversity < 0 else args.diversity,
                  exempt_partner=not args.no_exempt_partner, query_dropout=args.query_dropout, alpha=args.alpha,
                  max_len=args.max_len, query=args.query, augment=args.augment, views=args.views,
                  pseudo_names=args.pseudo_names, mmr=args.mmr,
                  seed=args.seed)
    cfg = GeneratorConfig(corpus=args.corpus, memory=args.memory, tokenizer=args.tokenizer,
                          text_tokenizer=args.text_tokenizer, out=args.out, size=args.size, dropout=args.dropout,
                          copy_dim=args.copy_dim,
                          retrieval=args.retrieval == "on", steps=args.steps, max_minutes=args.minutes,
                          batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                          warmup_steps=args.warmup_steps, eval_every=args.eval_every, eval_limit=args.eval_limit,
                          ra=ra, seed=args.seed, device=args.device, resume=args.resume)
    result = train_generator(cfg)
    print(f"saved generator to {args.out} after {result['steps']} steps ({result['minutes']:.1f} min, "
          f"{result['tokens_per_s'] or 0:.0f} tokens/s at the end)")
    for key, value in result.items():
        if key.endswith(tuple(f"_k{k}" for k in range(10))):
            print(f"  {key}: {value:.4f}")
    return 0
