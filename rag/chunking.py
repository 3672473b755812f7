"""Split text and markdown into overlapping chunks along natural boundaries.

Separators are tried coarse to fine (blank line, line, sentence, word), so a chunk breaks mid-sentence only
when a single sentence is longer than the chunk size.
"""

from __future__ import annotations

import re

_SEPARATORS = ("\n\n", "\n", ". ", " ")


def _split(text: str, size: int, separators: tuple[str, ...]) -> list[str]:
    """Pieces no longer than `size`, cut at the coarsest separator that works."""
    if len(text) <= size:
        return [text]
    if not separators:
        return [text[i : i + size] for i in range(0, len(text), size)]
    sep, finer = separators[0], separators[1:]
    parts = text.split(sep)
    pieces: list[str] = []
    for i, part in enumerate(parts):
        piece = part + (sep if i < len(parts) - 1 else "")
        if len(piece) <= size:
            pieces.append(piece)
        else:
            pieces.extend(_split(piece, size, finer))
    return pieces


def _tail(text: str, overlap: int) -> str:
    """The last ~`overlap` characters of `text`, starting at a word boundary."""
    if overlap <= 0 or len(text) <= overlap:
        return text if overlap > 0 else ""
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else tail


def chunk_text(text: str, size: int = 800, overlap: int = 120) -> list[str]:
    """Chunks of at most `size` characters (plus overlap carried from the previous chunk)."""
    if size <= 0:
        raise ValueError("size must be positive")
    if overlap >= size:
        raise ValueError("overlap must be smaller than size")
    text = re.sub(r"\r\n?", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        return []
    chunks: list[str] = []
    current = ""
    for piece in _split(text, size - overlap, _SEPARATORS):
        if current and len(current) + len(piece) > size:
            chunks.append(current.strip())
            current = _tail(current, overlap)
        current += piece
    if current.strip():
        chunks.append(current.strip())
    return [c for c in chunks if c]
