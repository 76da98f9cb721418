"""The tiny dual-encoder config the retrieval tests share (imported by name, unlike `conftest`)."""

TINY = dict(image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=16, text_width=32,
            text_layers=1, text_heads=2, embed_dim=32)
