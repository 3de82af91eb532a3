"""Prompt text of a chosen length in tokens, for servers that tokenize text themselves."""

from __future__ import annotations

import numpy as np

# Frequent short English words. Each is one token, with or without its leading space, in SmolLM2's
# BPE vocabulary (checked), as such common words are in most LLM vocabularies; so a prompt of N words
# is about N tokens. The server's usage report gives the exact count.
WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they",
    "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more",
    "when", "will", "would", "who", "so", "no", "out", "up", "into", "do", "time", "only", "new",
    "some", "could", "them", "than", "its", "other", "about", "my", "first", "over", "also", "what",
    "any", "after", "most", "like", "your", "may", "our", "these", "two", "then", "see", "made", "well",
    "way", "back", "now", "make", "even", "many", "just", "good", "people", "man", "years", "long",
    "must", "very", "year", "day", "part", "here", "how", "such", "life", "work", "through", "same",
    "where", "use", "get", "much", "old", "before", "own", "world", "between", "down", "know", "last",
    "say", "great", "still", "take", "come", "under", "think", "might", "while", "both", "each",
    "those", "hand", "high", "place", "end", "left", "three", "state", "small", "number", "off",
    "again",
)


def synthetic_prompt(num_tokens: int, seed: tuple[int, ...]) -> str:
    """About `num_tokens` tokens of words. Each seed shuffles the words its own way, so prompts of
    different requests share no prefix and a prefix cache cannot flatter the results."""
    order = np.random.default_rng(seed).permutation(len(WORDS))
    cycle = " ".join(WORDS[i] for i in order)
    whole_cycles, rest = divmod(num_tokens, len(WORDS))
    parts = [cycle] * whole_cycles + ([" ".join(WORDS[i] for i in order[:rest])] if rest else [])
    return " ".join(parts)
