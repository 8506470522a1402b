"""Custom JAX primitives of the emulated edge processor: what the chip does in circuitry.

- `decode_weights` (primitive `edge_decode_weights`): packed low-bit / sparse / Huffman-coded
  weight streams -> int8 codes (`decode.py`).
- `int_matmul` (primitive `edge_int_matmul`): int8 x int8 -> int32 accumulation, requantized by
  per-channel fixed-point multipliers, zero weights skipped, optionally only on the active rows
  of a row-activity operand (`int_matmul.py`).
- `fixedpoint.py`: real <-> (mult, shift) multipliers and the NumPy references.

Each primitive keeps its implementation (a jnp function), shape rule, lowering
(`mlir.lower_fun` of that function) and batching rule together; batching re-binds the same
primitive so the cost model sees it in any jaxpr. Inference only: no differentiation rules.

References:
  Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", arXiv:1712.05877; gemmlowp (doc/quantization.md).
"""

from hw.primitives.decode import (
    ENCODINGS,
    decode_weights,
    decode_weights_p,
    field_sizes,
    value_bytes,
)
from hw.primitives.fixedpoint import (
    dequantize_multiplier,
    int_matmul_reference,
    quantize_multiplier,
    requantize_reference,
)
from hw.primitives.int_matmul import (
    MAX_K,
    int_matmul,
    int_matmul_p,
    requantize,
    zero_weight_macs,
)

__all__ = [
    "ENCODINGS",
    "MAX_K",
    "decode_weights",
    "decode_weights_p",
    "dequantize_multiplier",
    "field_sizes",
    "int_matmul",
    "int_matmul_p",
    "int_matmul_reference",
    "quantize_multiplier",
    "requantize",
    "requantize_reference",
    "value_bytes",
    "zero_weight_macs",
]
