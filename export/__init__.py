"""The artifact: quantize, prune and pack low-bit weights with zero maps into one versioned,
checksummed file (see ARCHITECTURE.md). Filled in by the compression issues."""
