"""Tokenizers for the lm-eval adapter, with the interface of a Hugging Face tokenizer.

    bos_token_id, eos_token_id   int or None
    bos_token                    the BOS token's text, or None
    encode(text, add_special_tokens=None)   None: the tokenizer's own default (a Llama-style
                                            tokenizer adds BOS, a GPT-NeoX-style one adds nothing)
    decode(tokens, skip_special_tokens=False)

Random-weight models read UTF-8 bytes (`ByteTokenizer`); a checkpoint brings its own tokenizer
(`HFTokenizer`). Which special tokens get added, and where, is the adapter's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from altbench.errors import UserError


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None
    bos_token: str | None

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]: ...

    def decode(self, tokens: list[int], skip_special_tokens: bool = False) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 (the vocabulary of the `tiny` sizes). Byte 0 is the one special
    token, both BOS and EOS, and by default nothing is added (the GPT-NeoX convention)."""

    bos_token_id = eos_token_id = 0
    bos_token = "\x00"

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        return [self.bos_token_id] * bool(add_special_tokens) + list(text.encode("utf-8"))

    def decode(self, tokens: list[int], skip_special_tokens: bool = False) -> str:
        kept = [t for t in tokens if not (skip_special_tokens and t == self.eos_token_id)]
        return bytes(kept).decode("utf-8", errors="replace")


class HFTokenizer:
    """The tokenizer saved in a local checkpoint directory (transformers, never downloaded).

    `add_bos_token` (None: as saved) is passed to `AutoTokenizer.from_pretrained`, as lm-eval's
    Hugging Face backend does, so it changes what the tokenizer adds by default."""

    def __init__(self, path: str | Path, add_bos_token: bool | None = None):
        from transformers import AutoTokenizer

        kwargs = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
        except (OSError, ValueError) as err:
            raise UserError(
                f"{path}: no tokenizer files found ({type(err).__name__}); save the tokenizer beside the weights"
            ) from err
        self.bos_token_id, self.eos_token_id = self.tok.bos_token_id, self.tok.eos_token_id
        self.bos_token = self.tok.bos_token
        if self.eos_token_id is None:
            raise UserError(f"{path}: the tokenizer has no EOS token; generation and rolling windows need one")

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tok.encode(text, **kwargs)

    def decode(self, tokens: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode(tokens, skip_special_tokens=skip_special_tokens)
