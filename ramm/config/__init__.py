"""Every config a `ramm` command takes, in one home; each field has a comment (the CLI's help, through
`field_docs`) and a check in `__post_init__`. No heavy imports: the CLI builds its flags from these classes
before torch loads.

- `train`: what each `ramm train` command takes (`GeneratorConfig`, `SFTConfig`, `GraceConfig`, ...);
- `commands`: every other command's (`MemoryBuildConfig`, `GenerateImageConfig`, `ServeConfig`, ...);
- `components`: the configs those nest (`SplitConfig`, `TrainerConfig`, `RAConfig`, the tokenizer's and the
  dual encoder's architectures);
- `decode`: `DecodeConfig`, the one decoding settings type (CLI, facade, lab, HTTP API, generator.json);
- `schema`: JSON in and out (`load_config` names an unknown key's dotted field and its file).

A config is saved as JSON beside the weights and read back with `load_config`; a command's `--config FILE` is
a JSON of the same fields.
"""
from ramm.config.commands import (DataStatsConfig, GenerateCaptionConfig, GenerateConfig,
                                  GenerateEditConfig, GenerateImageConfig, GenerateInfillConfig, GraceSearchConfig,
                                  MemoryAddConfig, MemoryBuildConfig, MemorySearchConfig, RetrievalEvalConfig,
                                  ServeConfig)
from ramm.config.components import (DEFAULT_FRACTIONS, SPLITS, DualEncoderConfig, ImageTokenizerConfig, RAConfig,
                                    SplitConfig, TrainerConfig, check_fractions, split_rank_key)
from ramm.config.decode import DECODE_RANGES, METHODS, DecodeConfig, DecodeDefaults
from ramm.config.schema import (check_keys, dataclass_of, field_docs, from_dict, load_config, read_config, require,
                                save_config, to_dict, type_hints)
from ramm.config.train import (SCHEMES, ChameleonFinetuneConfig, GeneratorConfig, GraceConfig,
                               ImageTokenizerTrainConfig, RetrieverRecipeConfig, RetrieverTrainConfig, SFTConfig,
                               SFTMixture, TextTokenizerTrainConfig)

__all__ = [
    "DataStatsConfig", "GenerateCaptionConfig", "GenerateConfig", "GenerateEditConfig",
    "GenerateImageConfig", "GenerateInfillConfig", "GraceSearchConfig", "MemoryAddConfig", "MemoryBuildConfig",
    "MemorySearchConfig", "RetrievalEvalConfig", "ServeConfig",
    "DEFAULT_FRACTIONS", "SPLITS", "DualEncoderConfig", "ImageTokenizerConfig", "RAConfig", "SplitConfig",
    "TrainerConfig", "check_fractions", "split_rank_key",
    "DECODE_RANGES", "METHODS", "DecodeConfig", "DecodeDefaults",
    "check_keys", "dataclass_of", "field_docs", "from_dict", "load_config", "read_config", "require", "save_config", "to_dict",
    "type_hints",
    "SCHEMES", "ChameleonFinetuneConfig", "GeneratorConfig", "GraceConfig", "ImageTokenizerTrainConfig",
    "RetrieverRecipeConfig", "RetrieverTrainConfig", "SFTConfig", "SFTMixture", "TextTokenizerTrainConfig",
]
