"""How the next token is chosen (CM3Leon sec. 4.2): the one decoding settings type, and a bundle's defaults."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

METHODS = ("greedy", "sample", "cfg", "cd", "mix")  # mix: images only, half sample and half cd (`DecodeConfig.parts`)
# each numeric setting's (type, low, high or None, low excluded): `DecodeConfig.check`
DECODE_RANGES = {"temperature": (float, 0.0, None, False), "top_k": (int, 0, None, False),
                 "top_p": (float, 0.0, 1.0, True), "guidance_scale": (float, 0.0, 20.0, False),
                 "cd_alpha": (float, 0.0, 1.0, False), "cd_k": (int, 1, None, False)}


@dataclass
class DecodeConfig:
    """How the next token is chosen from the model's logits (CM3Leon sec. 4.2).

    The one type the CLI (`--decode.*`), the facade, the lab, the HTTP API and a bundle's generator.json share."""

    method: str = "sample"  # greedy | sample | cfg (classifier-free guidance) | cd (contrastive decoding CD-K) | mix (images: half sample, half cd)
    temperature: float = 1.0  # softmax temperature of the final draw; greedy ignores it
    top_k: int = 0  # keep only the k most likely tokens (0 = all)
    top_p: float = 1.0  # nucleus: keep the most likely tokens covering this mass (1 = all)
    guidance_scale: float = 3.0  # CFG weight s in uncond + s * (cond - uncond); CM3Leon swept 1..7
    cd_alpha: float = 0.1  # CD-K: candidates have p_cond >= alpha * (k-th largest p_cond)
    cd_k: int = 8  # CD-K: rank of the probability that sets the candidate threshold

    def __post_init__(self):
        for f in dataclasses.fields(self):
            self.check(f.name, getattr(self, f.name))
            if DECODE_RANGES.get(f.name, (None,))[0] is float:
                setattr(self, f.name, float(getattr(self, f.name)))  # 2 and 2.0 read and save alike

    @staticmethod
    def check(name: str, value) -> None:
        """ValueError naming the setting when `value` is out of its range (the HTTP schema checks with it too)."""
        if name == "method":
            if value not in METHODS:
                raise ValueError(f"unknown decoding method {value!r}; choose one of {METHODS}")
            return
        kind, low, high, low_open = DECODE_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite {kind.__name__}, got {value!r}")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            span = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
            raise ValueError(f"{name} must be in {span}, got {value}")

    @property
    def needs_uncond(self) -> bool:
        return self.method in ("cfg", "cd")

    def parts(self, counts: list[int]) -> list[tuple["DecodeConfig", list[int]]]:
        """(settings, samples per prompt) of each decode that `counts` samples per prompt take: one, or for
        CM3Leon's mix (it lowered their FID) the first half of each prompt's samples sampled, the rest by cd."""
        if self.method != "mix":
            return [(self, list(counts))]
        return [(dataclasses.replace(self, method="sample"), [c - c // 2 for c in counts]),
                (dataclasses.replace(self, method="cd"), [c // 2 for c in counts])]

    def with_overrides(self, where: str = "decoding", **overrides) -> "DecodeConfig":
        """These settings with some fields replaced (checked); an unknown name is a ValueError naming it."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"{where}: unknown decoding setting {', '.join(unknown)} "
                             f"(DecodeConfig has {', '.join(f.name for f in dataclasses.fields(self))})")
        return dataclasses.replace(self, **overrides) if overrides else self


@dataclass
class DecodeDefaults:
    """How a bundle decodes each task unless its caller says otherwise (generator.json `decode`)."""

    image: DecodeConfig = field(default_factory=DecodeConfig)  # text -> image (`ramm generate image`, POST /v1/images)
    caption: DecodeConfig = field(default_factory=DecodeConfig)  # image -> text (`ramm generate caption`, POST /v1/captions)


