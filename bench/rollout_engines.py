"""Generation throughput of the rollout engines (stages/rl/generation.py), in one run on this machine:
random Llama-shaped policies at the demo's size and at ~34M parameters, batches of 64 and 256 prompts,
responses of 24 and 128 tokens. Prints a markdown table with each engine's tokens/s and its ratio to `hf`
measured in the same run, then a cProfile of the losing engine on the smallest setting.

    .venv/bin/python bench/rollout_engines.py            # the table in docs/benchmarks.md
    .venv/bin/python bench/rollout_engines.py --quick    # demo size, batch 64, 24 tokens only

A random policy rarely samples its stop token, so every response runs to (nearly) its full length and the
engines do the same work. Each engine runs each setting twice: the first call pays for one-time work (the
compiled engine compiles its decode step for the shape; an RL stage pays it once), the second is timed
for the throughput and the ratio.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stages.rl.generation import ENGINES, GenerationRequest, make_engine
from stages.rl.noise import SamplingNoise
from stages.rl.rollout import left_pad

SIZES = {  # hidden, layers, heads, intermediate, vocab
    "demo (0.1M)": (32, 2, 2, 64, 384),
    "34M": (512, 8, 8, 1376, 8192),
}
PROMPT_TOKENS = 16
STOP, PAD = 1, 0


def policy(size: str) -> LlamaForCausalLM:
    hidden, layers, heads, intermediate, vocab = SIZES[size]
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        vocab_size=vocab,
        eos_token_id=STOP,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def prompts(batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    lengths = torch.randint(PROMPT_TOKENS // 2, PROMPT_TOKENS + 1, (batch,), generator=generator)
    rows = [torch.randint(2, vocab, (int(n),), generator=generator).tolist() for n in lengths]
    return left_pad(rows, PAD, "cpu")


def generate(engine, model, ids, mask, tokens: int):
    request = GenerationRequest(tokens, 1.0, [STOP], PAD, noise=SamplingNoise(0, 0, 0), seed=0)
    with torch.no_grad():
        return engine.generate(model, ids, mask, request)


def timed(name: str, model, ids, mask, tokens: int) -> tuple[float, float, int]:
    """(first call's seconds, a second identical call's seconds, tokens generated): the first pays for
    one-time work (the compiled engine traces and compiles its decode step for this shape)."""
    engine = make_engine(name, ids.shape[1])
    started = time.perf_counter()
    generate(engine, model, ids, mask, tokens)
    first = time.perf_counter() - started
    started = time.perf_counter()
    rollout = generate(engine, model, ids, mask, tokens)
    return first, time.perf_counter() - started, int(rollout.response_mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="demo size, batch 64, 24 tokens")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = [
        (size, batch, tokens)
        for size in SIZES
        for batch in (64, 256)
        for tokens in (24, 128)
        if not args.quick or (size == next(iter(SIZES)) and batch == 64 and tokens == 24)
    ]
    engines = sorted(ENGINES, key=lambda name: name != "hf")  # hf first: the baseline of each row
    print(f"torch {torch.__version__}, {args.threads} threads, engines: {', '.join(engines)}\n")
    columns = [
        "policy",
        "prompts",
        "new tokens",
        "engine",
        "first call s",
        "second call s",
        "tokens/s",
        "vs hf",
    ]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    worst: tuple[float, str, tuple] | None = None
    for size, batch, tokens in settings:
        model = policy(size)
        ids, mask = prompts(batch, model.config.vocab_size)
        baseline = None
        for engine in engines:
            first, seconds, generated = timed(engine, model, ids, mask, tokens)
            rate = generated / seconds
            baseline = baseline or rate
            cells = [size, batch, tokens, engine, f"{first:.2f}", f"{seconds:.2f}", f"{rate:,.0f}"]
            cells.append(f"{rate / baseline:.2f}x")
            print("| " + " | ".join(map(str, cells)) + " |")
            if engine != "hf" and (worst is None or rate / baseline < worst[0]):
                worst = (rate / baseline, engine, (size, batch, tokens))
    if worst is not None:
        ratio, engine, (size, batch, tokens) = worst
        print(
            f"\nProfile of `{engine}` where it loses most ({ratio:.2f}x of hf: {size}, {batch} x {tokens}):\n"
        )
        model = policy(size)
        ids, mask = prompts(batch, model.config.vocab_size)
        loser = make_engine(engine, ids.shape[1])
        generate(loser, model, ids, mask, tokens)  # its one-time work is not what the profile is about
        profiler = cProfile.Profile()
        profiler.enable()
        generate(loser, model, ids, mask, tokens)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        print("```\n" + "\n".join(out.getvalue().strip().splitlines()[-18:]) + "\n```")


if __name__ == "__main__":
    main()
