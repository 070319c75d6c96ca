"""BPE tokenizer: Nemotron special-token layout, HF loadability, chat template, determinism."""

from __future__ import annotations

import json

import pytest

from trtllm_nemotron.checkpoint.tiny import tokenizer_corpus
from trtllm_nemotron.errors import CheckpointError, ConfigError
from trtllm_nemotron.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_bpe_tokenizer

TEXT = 'def fibonacci(n):\n    """Return the n-th number."""\n    return n if n < 2 else fibonacci(n - 1)  # héllo 日本'


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_bpe_tokenizer(tokenizer_corpus(), 600, tmp_path_factory.mktemp("tok"))


def test_files_and_special_ids(tok_dir):
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["bos_token"] == "<s>" and cfg["eos_token"] == "<|im_end|>" and cfg["chat_template"]
    assert json.loads((tok_dir / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"
    t = load_tokenizer(tok_dir)
    assert t.vocab_size == 600
    ids = {s: t.token_to_id(s) for s in ("<unk>", "<s>", "</s>", "<|im_end|>", "<think>")}
    assert ids == {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 11, "<think>": 12}  # spec nemotron_h.md §8
    assert t.eos_token_ids() == [11, 2] and t.bos_token_id == 1
    assert t.encode("<|im_start|>user")[0] == t.token_to_id("<|im_start|>")


def test_round_trip_and_compression(tok_dir):
    t = load_tokenizer(tok_dir)
    ids = t.encode(TEXT)
    assert t.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode()) * 0.6  # merges were learned


def test_loads_in_tokenizers_and_transformers(tok_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    ours = load_tokenizer(tok_dir)
    ids = ours.encode(TEXT)
    assert raw.encode(TEXT).ids == ids
    assert hf.encode(TEXT, add_special_tokens=False) == ids
    assert hf.decode(ids) == TEXT
    assert hf.eos_token_id == 11 and hf.bos_token_id == 1 and len(hf) == 600
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    for kwargs in ({}, {"enable_thinking": False}):
        for gen in (True, False):
            want = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kwargs)
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen, **kwargs) == want
    assert ours.apply_chat_template(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert ours.apply_chat_template(msgs, enable_thinking=False).endswith("assistant\n<think></think>")


def test_deterministic_and_small_vocab_error(tmp_path, tok_dir):
    again = train_bpe_tokenizer(tokenizer_corpus(), 600, tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    with pytest.raises(ConfigError, match=f"at least {len(SPECIAL_TOKENS) + 256}"):
        train_bpe_tokenizer(["abc"], 100, tmp_path / "small")


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_generation_config_eos_ids_join_and_a_broken_one_is_a_clear_error(tmp_path, tok_dir):
    import shutil

    from trtllm_nemotron.tokenizer import Tokenizer

    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 11, 7]}))
    assert Tokenizer.from_dir(d).eos_token_ids() == [11, 2, 7]
    (d / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json is not valid JSON"):
        Tokenizer.from_dir(d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(CheckpointError, match="eos_token_id must be an int"):
        Tokenizer.from_dir(d)
