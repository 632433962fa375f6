"""Draft tokens for speculative decoding: an n-gram table over the request's own tokens.

The coordinator holds no model, so the draft is prompt-lookup decoding: find the latest
earlier occurrence of the sequence's last n tokens (longest n first) and propose the tokens
that followed it. The room then runs [last token, drafts] in ONE pass through the spans and
the coordinator keeps the drafts only as far as they equal the room's own greedy choices, so
at temperature 0 the output is exactly plain greedy decoding; a wrong draft costs a few more
positions in a pass that was happening anyway. Repetitive text (code, lists, quotes of the
prompt, and the loops small models fall into) is where it pays.
"""
from __future__ import annotations

MAX_NGRAM = 4
MIN_NGRAM = 1
WINDOW = 2048  # only the recent past is searched: O(window) per pass


def propose(tokens: list[int], k: int) -> list[int]:
    """Up to k tokens that followed the latest earlier match of the longest suffix n-gram."""
    if k <= 0 or len(tokens) < 2:
        return []
    seq = tokens[-WINDOW:]
    for n in range(min(MAX_NGRAM, len(seq) - 1), MIN_NGRAM - 1, -1):
        tail = seq[-n:]
        for i in range(len(seq) - n - 1, -1, -1):  # latest match first, never the suffix itself
            if seq[i:i + n] == tail:
                return seq[i + n:i + n + k]
    return []
