"""Write a small random-init BERT (2 layers, width 64) with the tokenizer of another model to a folder.

For machines without the pretrained all-MiniLM-L6-v2 package (a lent GPU cannot install it): the GPU
checks exercise the model's mechanics, which do not depend on pretrained text features.

    python benchmarks/make_tiny_text_encoder.py TOKENIZER_DIR OUT_DIR
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoTokenizer, BertConfig, BertModel


def main(tokenizer_dir: str, out: str) -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"tiny BERT (width {config.hidden_size}) written to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
