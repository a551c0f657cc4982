"""GGUF format constants: ggml tensor types with their block layouts, metadata value types, keys.

The ids are ggml's (ggml.h `enum ggml_type`, gguf's `enum gguf_type`); they are stored in files, so
they never change. Names follow ggml and the `gguf` package.
"""

from __future__ import annotations

import enum

import numpy as np

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME is 64 including the terminating NUL
QK_K = 256  # elements per super-block of the K-quants and most IQ types

# (block_size, type_size): elements per block and bytes per block.
_LAYOUT: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    # ggml's block_q8_1 is {f16 d, f16 s, int8 qs[32]} = 36 bytes (static_assert in ggml-common.h).
    # gguf-py still lists 40 (from when d and s were f32); we follow ggml, which defines the format.
    "Q8_1": (32, 2 + 2 + 32),
    "Q2_K": (QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    "Q3_K": (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    "Q4_K": (QK_K, 2 + 2 + 12 + QK_K // 2),
    "Q5_K": (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    "Q6_K": (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    "Q8_K": (QK_K, 4 + QK_K + QK_K // 8),
    "IQ2_XXS": (QK_K, 2 + QK_K // 4),
    "IQ2_XS": (QK_K, 2 + QK_K // 4 + QK_K // 32),
    "IQ3_XXS": (QK_K, 2 + QK_K // 4 + QK_K // 8),
    "IQ1_S": (QK_K, 2 + QK_K // 8 + QK_K // 16),
    "IQ4_NL": (32, 2 + 16),
    "IQ3_S": (QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    "IQ2_S": (QK_K, 2 + QK_K // 4 + QK_K // 16),
    "IQ4_XS": (QK_K, 2 + 2 + QK_K // 64 + QK_K // 2),
    "I8": (1, 1),
    "I16": (1, 2),
    "I32": (1, 4),
    "I64": (1, 8),
    "F64": (1, 8),
    "IQ1_M": (QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    "BF16": (1, 2),
    "TQ1_0": (QK_K, 2 + 4 * 13),
    "TQ2_0": (QK_K, 2 + 64),
    "MXFP4": (32, 1 + 16),
    "NVFP4": (64, 4 + 32),
    "Q1_0": (128, 2 + 16),
}


class GGMLType(enum.IntEnum):
    """A ggml tensor type. `block_size` elements are stored in `type_size` bytes."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    # 4, 5 were Q4_2 and Q4_3, removed from ggml
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    # 31-33 (Q4_0_4_4 ...) and 36-38 (IQ4_NL_4_4 ...) were runtime repacks, removed from files
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39
    NVFP4 = 40
    Q1_0 = 41

    @property
    def block_size(self) -> int:
        return _LAYOUT[self.name][0]

    @property
    def type_size(self) -> int:
        return _LAYOUT[self.name][1]

    @property
    def is_quantized(self) -> bool:
        return self.block_size > 1

    def row_nbytes(self, n: int) -> int:
        """Bytes taken by `n` elements (n must be a multiple of block_size)."""
        if n % self.block_size:
            raise ValueError(f"{n} elements are not a whole number of {self.name} blocks")
        return n // self.block_size * self.type_size


class GGUFValueType(enum.IntEnum):
    """The type tag of a metadata value (gguf.h `enum gguf_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Little-endian numpy dtype of each fixed-size value type (STRING and ARRAY have none).
VALUE_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}

# llama.cpp's `enum llama_ftype` (general.file_type), for display.
FILE_TYPES: dict[int, str] = {
    0: "ALL_F32",
    1: "MOSTLY_F16",
    2: "MOSTLY_Q4_0",
    3: "MOSTLY_Q4_1",
    7: "MOSTLY_Q8_0",
    8: "MOSTLY_Q5_0",
    9: "MOSTLY_Q5_1",
    10: "MOSTLY_Q2_K",
    11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M",
    13: "MOSTLY_Q3_K_L",
    14: "MOSTLY_Q4_K_S",
    15: "MOSTLY_Q4_K_M",
    16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M",
    18: "MOSTLY_Q6_K",
    19: "MOSTLY_IQ2_XXS",
    20: "MOSTLY_IQ2_XS",
    21: "MOSTLY_Q2_K_S",
    22: "MOSTLY_IQ3_XS",
    23: "MOSTLY_IQ3_XXS",
    24: "MOSTLY_IQ1_S",
    25: "MOSTLY_IQ4_NL",
    26: "MOSTLY_IQ3_S",
    27: "MOSTLY_IQ3_M",
    28: "MOSTLY_IQ2_S",
    29: "MOSTLY_IQ2_M",
    30: "MOSTLY_IQ4_XS",
    31: "MOSTLY_IQ1_M",
    32: "MOSTLY_BF16",
    36: "MOSTLY_TQ1_0",
    37: "MOSTLY_TQ2_0",
    38: "MOSTLY_MXFP4_MOE",
    39: "MOSTLY_NVFP4",
    40: "MOSTLY_Q1_0",
    1024: "GUESSED",
}


class Keys:
    """Well-known metadata keys; `{arch}` is general.architecture's value."""

    ARCHITECTURE = "general.architecture"
    NAME = "general.name"
    ALIGNMENT = "general.alignment"
    FILE_TYPE = "general.file_type"
    QUANTIZATION_VERSION = "general.quantization_version"
    CONTEXT_LENGTH = "{arch}.context_length"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    BLOCK_COUNT = "{arch}.block_count"
    TOKENIZER_MODEL = "tokenizer.ggml.model"
    TOKENIZER_PRE = "tokenizer.ggml.pre"
    TOKENS = "tokenizer.ggml.tokens"
    CHAT_TEMPLATE = "tokenizer.chat_template"
