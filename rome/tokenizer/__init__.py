"""ROME's tokenizer: byte-level BPE trained by `rome init`, the chat template, the tool-call parser."""
