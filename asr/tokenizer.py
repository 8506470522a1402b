"""Subword tokenizer: a sentencepiece unigram model trained on the corpus text.

Id 0 is the transducer's blank (sentencepiece's pad piece `<blk>`, never produced by encode);
id 1 is `<unk>`; no BOS/EOS. The serialized model (bytes) is stored with every checkpoint and
artifact, so a model never depends on a tokenizer file elsewhere.

References: Kudo 2018, "Subword Regularization" (unigram LM); Kudo & Richardson 2018,
"SentencePiece".
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

BLANK_ID = 0


class Tokenizer:
    """Wraps a sentencepiece processor; id 0 is blank."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        if self._sp.pad_id() != BLANK_ID:
            raise ValueError(f"tokenizer must have pad/blank id 0, got {self._sp.pad_id()}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 128) -> Tokenizer:
        """Trains a unigram model on `texts` (already normalized)."""
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError("cannot train a tokenizer on no text")
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=out,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            pad_id=0,
            pad_piece="<blk>",
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            hard_vocab_limit=False,
            num_threads=1,  # deterministic: same text, same model
            minloglevel=2,
        )
        return cls(out.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids if int(i) > 1]  # drop blank and unk
        return self._sp.decode(ids)

    def piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))
