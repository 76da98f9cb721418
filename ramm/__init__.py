"""ramm: retrieval-augmented multimodal models (RA-CM3, CM3Leon decoding, GRACE).

Kept import-light: `import ramm` must not import torch (the CLI imports what each command needs).
"""
__version__ = "0.1.0"
