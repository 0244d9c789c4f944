"""The label that tells a loss to skip a position: -100, PyTorch's `cross_entropy(ignore_index=...)` default and the
value every Hugging Face model, collator and trainer uses for prompt tokens, padding and unaligned subwords."""

IGNORE_INDEX = -100
