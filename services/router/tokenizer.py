"""The router's tokenizer: the model's own, loaded from its local checkpoint directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Tokenizer:
    hf: Any
    vocab_size: int
    max_model_len: int

    @staticmethod
    def load(model_dir: str) -> "Tokenizer":
        from transformers import AutoTokenizer  # heavy import, only where a tokenizer is needed

        hf = AutoTokenizer.from_pretrained(model_dir)
        config = json.loads((Path(model_dir) / "config.json").read_text())
        vocab = max(len(hf), int(config.get("vocab_size", 0)))
        return Tokenizer(hf, vocab, int(config.get("max_position_embeddings", 2048)))

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)
