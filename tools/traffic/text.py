"""Synthetic English-like text for payloads, prompts and LLM answers.

Payload bytes are drawn from a word list rather than repeated characters.
WebSocket permessage-deflate is on by default and compresses a run of one
character to almost nothing, while prose shrinks only a few times: text from
`filler` deflates to about 28% of its size. Everything here is deterministic given the `random.Random` passed in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

WORDS = (
    "the of and to in is that for it as with was on be by this are from or have an they which one you were "
    "all we can her has there been if more when will would who so no time about into other than then "
    "these some could only new also after first two way most people over such where through years much "
    "network router device traffic packet model answer question response sensor reading value window "
    "system request stream token session server client message context summary result document query "
    "example function memory process threshold feature interval temperature humidity pressure battery "
    "configuration deployment connection performance detection encryption gateway measurement "
    "understanding information particularly significantly implementation recommendation"
).split()

PUNCTUATION = (".", ",", ":", "\n")

# Maximum token length in characters, leading space included. With the word
# list above, `llm_tokens` then averages 4.1 characters a token (measured over
# 100,000 tokens), near the usual four for English under byte-pair-encoding
# tokenizers.
MAX_TOKEN_CHARS = 6


def filler(rng: random.Random, size: int) -> str:
    """Return exactly `size` characters of space-separated words (ASCII, JSON-safe)."""
    if size <= 0:
        return ""
    parts: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size]


def llm_tokens(rng: random.Random, count: int) -> list[str]:
    """Return `count` tokens of an LLM-like answer: word pieces with leading spaces and some punctuation."""
    tokens: list[str] = []
    while len(tokens) < count:
        if tokens and rng.random() < 0.08:
            tokens.append(rng.choice(PUNCTUATION))
            continue
        word = " " + rng.choice(WORDS)
        # Long words split into pieces the way a subword tokenizer splits rare words.
        while word and len(tokens) < count:
            piece_length = rng.randint(3, MAX_TOKEN_CHARS) if len(word) > MAX_TOKEN_CHARS else len(word)
            tokens.append(word[:piece_length])
            word = word[piece_length:]
    return tokens


def json_of_size(rng: random.Random, build: Callable[[str], dict[str, Any]], size: int) -> str:
    """Encode `build(text)` as compact JSON of about `size` bytes, `text` being words from `filler`.

    The result is exactly `size` bytes unless `build("")` alone is longer.
    """
    empty = json.dumps(build(""), separators=(",", ":"))
    return json.dumps(build(filler(rng, size - len(empty))), separators=(",", ":"))
