"""CLIP's byte-level BPE tokenizer, exactly as OpenAI's `clip.tokenize` behaves.

The vocabulary file is the one open_clip ships (byte-identical to OpenAI's
`bpe_simple_vocab_16e6.txt.gz`). Behaviour that the released weights depend on:
ftfy repair, HTML unescaped twice, whitespace collapsed, lower-cased, CLIP's regex,
the first 48,894 merges, `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407, zero
padding to 77 and - unlike open_clip, which truncates silently - an error for a text
that does not fit (set ``truncate=True`` to cut it and keep the end-of-text token).
"""

from __future__ import annotations

import functools
import gzip
import html
from typing import Iterable, Sequence

import ftfy
import regex as re
import torch

from .errors import TextTooLongError

CONTEXT_LENGTH = 77
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2


def _vocab_path() -> str:
    from open_clip.tokenizer import default_bpe

    return default_bpe()


def _byte_alphabet() -> dict[int, str]:
    # Printable bytes map to themselves; the rest are shifted past 255 so that every
    # byte has a visible, non-whitespace stand-in the BPE merges can refer to.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class Tokenizer:
    """Byte-level BPE over CLIP's merges; one instance is shared (see `get_tokenizer`)."""

    def __init__(self, vocab_path: str | None = None):
        with gzip.open(vocab_path or _vocab_path(), "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        self.byte_encoder = _byte_alphabet()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id = self.encoder[SOT_TOKEN]
        self.eot_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self._cache = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        self._pattern = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    def _bpe(self, token: str) -> str:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._pattern.findall(_clean(text)):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in (0, self.sot_id, self.eot_id))
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(
        self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = False
    ) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > context_length:
                if not truncate:
                    raise TextTooLongError(text, len(ids), context_length)
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return result


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH, truncate: bool = False) -> torch.Tensor:
    """`LongTensor[N, context_length]`, identical to OpenAI's `clip.tokenize`."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)


def join_entities(text: str | Sequence[str]) -> str:
    """AudioSet-style label lists become one string, labels joined with ", "."""
    if isinstance(text, str):
        return text
    return ", ".join(str(t) for t in text)


def apply_template(texts: Sequence[str | Sequence[str]], template: str = "{}") -> list[str]:
    """Join entity lists and format each with `template` (the released weights: "{}")."""
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder")
    return [template.format(join_entities(t)) for t in texts]
