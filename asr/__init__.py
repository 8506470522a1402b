"""What a trained model does: audio and features, tokenizer, Flax modules, decoding, command line.

The on-device recognizer: a streaming transformer transducer (Graves 2012; Zhang et al. 2020,
"Transformer Transducer") over 80-dim log-mel features.
"""

__version__ = "0.1.0"
