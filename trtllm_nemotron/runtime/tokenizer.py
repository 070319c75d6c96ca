"""UTF-8-safe incremental detokenization and stop strings, over the package's one tokenizer wrapper.

- `Tokenizer` (with its chat template and byte-level fallback) is `trtllm_nemotron.tokenizer.Tokenizer`,
  re-exported here for the runtime's callers.
- `IncrementalDetokenizer` turns a growing list of ids into text deltas that never split a UTF-8 character:
  it decodes a short window twice (without and with the new ids, vLLM's prefix/read offsets) and holds
  back text ending in U+FFFD (an incomplete byte sequence) until the next id completes it.
- `StopStringFilter` withholds any tail that could still become a stop string and cuts the text at the first
  full match, so stop strings never reach the client.
"""

from __future__ import annotations

from trtllm_nemotron.tokenizer import CHATML_TEMPLATE, Tokenizer, byte_level_tokenizer

__all__ = [
    "CHATML_TEMPLATE",
    "IncrementalDetokenizer",
    "StopStringFilter",
    "Tokenizer",
    "byte_level_tokenizer",
]


class IncrementalDetokenizer:
    """ids in, text deltas out; a delta never ends inside a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an invalid trailing byte sequence shows as U+FFFD)."""
        prefix = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


class StopStringFilter:
    """Text deltas in, safe deltas out; `matched` turns True at the first full stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""  # everything received
        self.emitted = 0  # chars of self.text already returned
        self.matched = False

    def push(self, delta: str) -> str:
        if self.matched:
            return ""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        longest = max(len(s) for s in self.stops)
        start = max(0, self.emitted - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            self.matched = True
            out = self.text[self.emitted : cut]
            self.text = self.text[:cut]
            self.emitted = cut
            return out
        hold = 0  # longest tail of text that is a proper prefix of a stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        end = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out
