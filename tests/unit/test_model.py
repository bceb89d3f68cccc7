"""The default tiny model builds deterministically and loads through the normal HF path."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest

from services.common import model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    first = model.ensure_default_model(tmp_path_factory.mktemp("a") / "m")
    second = model.ensure_default_model(tmp_path_factory.mktemp("b") / "m")
    return first, second


def test_two_builds_are_byte_identical(built):
    first, second = built
    for name in ("tokenizer.json", "model.safetensors", "config.json", "tokenizer_config.json"):
        assert _sha256(first / name) == _sha256(second / name), name


def test_ensure_returns_existing_dir_without_rebuilding(built):
    first, _ = built
    before = (first / "model.safetensors").stat().st_mtime_ns
    assert model.ensure_default_model(first) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_tokenizer_round_trips_text_and_adds_bos(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built[0])
    text = "The scheduler ranked 3 requests by slack, then placed them. Ünïcode too!"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert 1800 <= len(tokenizer) <= 2048


def test_chat_template_renders_generation_prompt(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built[0])
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s><|user|>\nhi</s>\n<|assistant|>\n"


def test_config_matches_spec(built):
    config = json.loads((built[0] / "config.json").read_text())
    vocab = json.loads((built[0] / "tokenizer.json").read_text())["model"]["vocab"]
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (256, 4)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["max_position_embeddings"] == 2048
    assert config["dtype"] == "bfloat16"
    assert config["vocab_size"] == len(vocab)
    generation = json.loads((built[0] / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (vocab["<s>"], vocab["</s>"])


def test_default_dir_is_tagged_under_cache_root(tmp_path):
    path = model.default_model_dir(tmp_path)
    assert path == tmp_path / "models" / f"tiny-llama-{model.model_tag()}"
    assert len(model.model_tag()) == 8


def test_model_init_command_prints_path(built, capsys):
    parser = argparse.ArgumentParser()
    model.add_model_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model", "init", "--out", str(built[0])])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(built[0])


@pytest.mark.parametrize("text, target", [("500M", 500 * 10**6), ("1B", 10**9), ("30M", 30 * 10**6)])
def test_params_spec_lands_near_the_requested_size(text, target):
    n = model.parse_params(text)
    assert n == target
    s = model.model_spec(n)
    h, inter, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    total = 2 * model.VOCAB_SIZE_TARGET * h + layers * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h)
    assert abs(total - target) / target < 0.1
    assert model.default_model_dir(params=n) != model.default_model_dir()


@pytest.mark.parametrize("bad", ["", "abc", "10", "50B"])
def test_params_refuses_nonsense(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        model.parse_params(bad)


def test_default_spec_and_dir_unchanged_by_params_option():
    assert model.model_spec() == model.MODEL_SPEC
    assert model.default_model_dir().name == f"tiny-llama-{model.model_tag()}"


def test_no_weights_builds_the_same_tokenizer_and_config_without_weights(built, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    model.add_model_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "light"
    args = parser.parse_args(["model", "init", "--out", str(out), "--no-weights"])
    assert args.func(args) == 0
    assert not list(out.glob("*.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        assert _sha256(out / name) == _sha256(built[0] / name), name
    # Never into the default cache, where a later vLLM worker would find a model without weights.
    args = parser.parse_args(["model", "init", "--no-weights"])
    assert args.func(args) == 2
    assert "--no-weights needs --out" in capsys.readouterr().err
