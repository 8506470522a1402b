"""The emulated neural edge processor: weight-decoding and integer sparse matmul primitives, cost
model and streaming runtime (see ARCHITECTURE.md). Filled in by the hardware issues."""
