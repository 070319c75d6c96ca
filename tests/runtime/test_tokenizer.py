"""Streaming detokenization never splits a UTF-8 character; stop strings never leak; chat template."""

from __future__ import annotations

from trtllm_nemotron.runtime.tokenizer import (
    IncrementalDetokenizer,
    StopStringFilter,
    Tokenizer,
    byte_level_tokenizer,
)

TEXT = "héllo wörld → 世界 🙂 done"


def _byte_tok() -> Tokenizer:
    return Tokenizer(byte_level_tokenizer(), byte_fallback=True)


def test_byte_fallback_round_trip_and_ids():
    tok = _byte_tok()
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT.encode()) and min(ids) >= 3 and max(ids) <= 258
    assert tok.decode(ids) == TEXT


def test_incremental_deltas_are_whole_characters_and_concatenate_to_the_text():
    tok = _byte_tok()
    d = IncrementalDetokenizer(tok)
    deltas = [d.push([i]) for i in tok.encode(TEXT)]
    assert "".join(deltas) + d.flush() == TEXT
    assert all("\ufffd" not in x for x in deltas)
    assert "" in deltas  # multi-byte characters were held back until complete
    for x in deltas:  # each delta is valid text on its own
        assert x.encode("utf-8").decode("utf-8") == x


def test_trained_tokenizer_streaming(tiny_dir):
    tok = Tokenizer.from_dir(tiny_dir)
    text = "def f(x):\n    return x  # ünïcode ✓"
    ids = tok.encode(text)
    d = IncrementalDetokenizer(tok)
    out = "".join(d.push([i]) for i in ids) + d.flush()
    assert out == tok.decode(ids)


def test_stop_strings_are_cut_and_held_back():
    f = StopStringFilter(("STOP", "\n\n"))
    out = [f.push(c) for c in "abc ST"]
    assert "".join(out) == "abc "  # "ST" may become "STOP": held back
    assert f.push("x") == "STx" and not f.matched
    assert f.push(" end\n") == " end" and f.push("\nmore") == "" and f.matched
    assert f.text == "abc STx end"


def test_chat_template_chatml_default_and_checkpoint_template(tiny_dir):
    """Without a template of its own a checkpoint gets Nemotron 3's shape: the generation prompt opens the
    reasoning block unless `enable_thinking=False` (the template trained tokenizers carry)."""
    tok = _byte_tok()
    s = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    empty_system = "<|im_start|>system\n<|im_end|>\n"  # Nemotron 3 always opens with a system turn
    assert s == empty_system + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    no_think = tok.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert no_think == empty_system + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think></think>"
    trained = Tokenizer.from_dir(tiny_dir)  # make_tiny trains a tokenizer: its template renders the same
    assert trained.chat_template and trained.apply_chat_template([{"role": "user", "content": "hi"}]) == s
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[user]x"
