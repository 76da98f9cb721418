"""Tokenizers: text BPE, VQ image tokenizer, the unified vocabulary and the CM3 sequence format."""
