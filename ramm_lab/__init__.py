"""The EmojiBench lab, beside the `ramm` library: the corpus build (`emojibench`), its corpus format and hooks
(`corpus_format`), the headline protocol and demo stages (`demo`, `headline`, `evaluation_network`, `report`), the SFT demo
(`sft`), the cross-style probe, and the `ramm demo`, `ramm demo-sft`, `ramm eval --run`, `ramm data emojibench`
commands (`cli`).

ramm_lab imports ramm; ramm never imports ramm_lab (tests/test_layers.py): it reaches the lab only through the
entry points pyproject.toml declares (`ramm.plugins`).
"""
