"""Random-initialised policy and reward model of a chosen size, with the harness's tiny tokenizer, for timing
and memory runs where learning does not matter (a random policy rarely samples EOS, so every response runs to
its full length: step times are then comparable across settings).

  .venv/bin/python bench/make_sized.py --tokenizer DIR --out DIR --hidden 512 --layers 8 [--heads 8]

Writes OUT/policy (LlamaForCausalLM) and OUT/reward (LlamaForSequenceClassification, num_labels=1), each with
the tokenizer files beside the weights, so both our stages and the peer scripts load them. Prints a JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=None, help="default: hidden / 64, at least 4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "reward" / "model.safetensors").exists() and (out / "params.json").exists():
        print(
            json.dumps({"sized": str(out), "cached": True, **json.loads((out / "params.json").read_text())})
        )
        return
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    heads = args.heads or max(4, args.hidden // 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    policy = LlamaForCausalLM(config)
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    reward = LlamaForSequenceClassification(config.__class__(**{**config.to_dict(), "num_labels": 1}))
    for name, model in (("policy", policy), ("reward", reward)):
        staging = out / f".{name}.incomplete"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(out / name, ignore_errors=True)
        staging.rename(out / name)
    params = sum(p.numel() for p in policy.parameters())
    (out / "params.json").write_text(json.dumps({"params": params}))
    print(json.dumps({"sized": str(out), "hidden": args.hidden, "layers": args.layers, "params": params}))


if __name__ == "__main__":
    main()
