"""Builders for the hostile-input suite (tests/hostile/conftest.py): tiny documents, tokenizers, encoders,
the CLI run in-process, and another process holding a lock."""
import subprocess
import sys

import numpy as np
import torch

SIZE = 16


def square(rgb, size=SIZE):
    img = np.full((size, size, 3), 255, np.uint8)
    img[size // 5: -(size // 5), size // 5: -(size // 5)] = rgb
    return img


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 20)}


def pair_docs(sizes=(SIZE,)):
    """Eight caption + image documents (two styles of four colours), image sides cycling through `sizes`."""
    from ramm.corpus.document import Document
    docs = []
    for style in ("a", "b"):
        for name, rgb in COLOURS.items():
            side = sizes[len(docs) % len(sizes)]
            docs.append(Document.from_pair(f"{style}-{name}", f"{style} emoji: {name} square",
                                           square(rgb if style == "a" else rgb[::-1], side),
                                           metadata={"concept": name}))
    return docs


def tiny_image_tokenizer(seed=0):
    from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
    torch.manual_seed(seed)
    return ImageTokenizer(ImageTokenizerConfig(image_size=SIZE, grid=4, patch=2, channels=8, latent_dim=8))


def tiny_encoder(docs, image_size=SIZE):
    from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
    torch.manual_seed(0)
    cfg = DualEncoderConfig(image_size=image_size, channels=(8, 16), text_vocab_size=300, text_max_len=16,
                            text_width=32, text_layers=1, text_heads=2, embed_dim=32)
    return DualEncoder(cfg, train_text_tokenizer([d.text for d in docs], 300))


def cli(*argv) -> int:
    from ramm.__main__ import main
    return main([str(a) for a in argv])


def one_line_error(capsys) -> str:
    """The CLI's stderr, checked to be one `ramm: error:` line (log lines aside) and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.count("ramm: error:") == 1, err  # (a progress bar may share its line)
    return "ramm: error:" + err.split("ramm: error:")[1].splitlines()[0]


class Holder:
    """Another process holding an flock on `lock_file` with its pid written in it, as `ramm.utils.exclusive_lock`
    holders do (plain Python: no imports to wait for), until closed."""

    def __init__(self, lock_file):
        code = ("import fcntl, os, sys\n"
                "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.pwrite(fd, str(os.getpid()).ljust(20).encode(), 0)\n"
                "print('held', flush=True)\n"
                "sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(lock_file)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
