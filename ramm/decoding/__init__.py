"""Decoding: sampling, classifier-free guidance, contrastive decoding CD-K, constrained generation, re-ranking."""
