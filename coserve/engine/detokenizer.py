"""Incremental detokenisation with stop strings.

Decoding only a short window of recent tokens keeps the cost per token constant, and a window that
ends inside a multi-byte character (U+FFFD) waits for the next token instead of emitting garbage.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str], include_stop_str_in_output: bool = False):
        self.tokenizer = tokenizer
        self.stop = stop
        self.include_stop = include_stop_str_in_output
        self.token_ids: list[int] = []
        self.text = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def add_tokens(self, new_ids: list[int]) -> str | None:
        """Extend the text; returns the stop string that ended it, if one appeared."""
        if self.tokenizer is None:  # token ids only (the simulator, tests): no text to build
            return None
        self.token_ids.extend(new_ids)
        start = len(self.text)
        self.text += self._new_text()
        return self._find_stop(start) if self.stop else None

    def _new_text(self) -> str:
        ids = self.token_ids
        prefix = self.tokenizer.decode(ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(ids[self._prefix_offset:], skip_special_tokens=True)
        if full.endswith("\ufffd") or len(full) <= len(prefix):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        return full[len(prefix):]

    def _find_stop(self, new_from: int) -> str | None:
        """The stop string that appears first in the text (not first in the list), if any."""
        found: tuple[int, str] | None = None
        for stop in self.stop:
            # a stop string may straddle the old and new text
            index = self.text.find(stop, max(0, new_from - len(stop) + 1))
            if index != -1 and (found is None or index < found[0]):
                found = (index, stop)
        if found is None:
            return None
        index, stop = found
        self.text = self.text[:index + len(stop)] if self.include_stop else self.text[:index]
        return stop
