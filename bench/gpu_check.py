"""The GPU checks of issues #16 and #17 in one prepared script, with a CPU-sized version that runs anywhere.

A Qwen2-shaped policy built from its config (no download): Qwen2.5-0.5B's trunk (hidden 896, 24 layers,
14 heads, 2 KV heads, intermediate 4864) with the vocabulary of a BPE tokenizer trained here on the demo
corpus (8192 tokens instead of 151,936: the demo's data needs no more). Random weights: what is measured
is memory and speed, and that the training signal moves. Every run is `rlhf run` on a generated config.

  fsdp2     PPO + LoRA and GRPO, bf16, `engine: fsdp2` on 1 process: peak GPU memory, step time, and the
            policy loss and reward of the first and last step (#16)
  rollouts  GRPO, 8 samples per prompt, 256-token responses, bf16, with each rollout engine (hf, compiled,
            paged): the mean step's generation share and generated tokens/s per GPU (#17)
  trl       TRL's GRPOTrainer (its default transformers generation) on the same policy and settings (#17)

    python bench/gpu_check.py --out /tmp/gpu_check                 # on a GPU: the figures for the docs
    python bench/gpu_check.py --out /tmp/gpu_check --size tiny     # CPU-sized: 2 layers, 32-token responses

Prints one JSON line per run, then a markdown table. Record the card's name (printed first) with them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

SIZES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab=8192, new_tokens=256, prompts_per_step=8, steps=4),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab=512, new_tokens=32, prompts_per_step=4, steps=3),
}  # fmt: skip
GROUP = 8  # samples per prompt
REWARD = {"reward_models.gold:reviews_gold": 1.0}


def build_policy(out: Path, size: str) -> Path:
    """A random Qwen2-shaped causal LM and a tokenizer trained on the demo corpus, in out/policy."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pipeline.data import load_rows
    from pipeline.tokenizer_training import train_bpe_tokenizer

    folder = out / "policy"
    if (folder / "config.json").exists():
        return folder
    shape = {
        k: v for k, v in SIZES[size].items() if k not in ("vocab", "new_tokens", "prompts_per_step", "steps")
    }
    texts = [row["text"] for row in load_rows("demo:reviews/corpus", ["text"])]
    tokenizer = train_bpe_tokenizer(texts, SIZES[size]["vocab"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **shape,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rl_block(policy: Path, size: str, **overrides) -> dict:
    s = SIZES[size]
    bf16 = torch.cuda.is_available()
    return {
        "kind": "rl",
        "algorithm": "grpo",
        "policy": str(policy),
        "reward_model": None,
        "reward_functions": REWARD,
        "prompts": "demo:reviews/prompts",
        "batch_size": s["prompts_per_step"],
        "group_size": GROUP,
        "total_episodes": s["prompts_per_step"] * GROUP * s["steps"],
        "minibatch_size": s["prompts_per_step"] * GROUP // 2,
        "micro_batch_size": 8,
        "ppo_epochs": 1,
        "max_new_tokens": s["new_tokens"],
        "temperature": 1.0,
        "lr": 1e-5,
        "mixed_precision": "bf16" if bf16 else "no",
        "gradient_checkpointing": bf16,
        "checkpoint_overhead": None,
        **overrides,
    }


def run_stage(out: Path, name: str, block: dict) -> dict:
    """`rlhf run` of one RL stage; its final metrics and history."""
    config = {"name": name, "seed": 0, "stages": {name: block}}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(path), "--run-dir", str(out / name)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return {"run": name, "error": done.stderr[-1500:]}
    record = json.loads((out / name / name / "rlhf_stage.json").read_text())
    history = json.loads((out / name / name / "history.json").read_text())
    metrics = record["metrics"]
    steady = history[1:] or history  # the first step pays for warm-up (the compiled engine: its compile)

    def median(key: str) -> float | None:
        values = sorted(row[key] for row in steady if key in row)
        return values[len(values) // 2] if values else None

    return {
        "run": name,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_gpu_mb": metrics.get("peak_cuda_mb"),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
        "step_s": median("time/step_s"),  # medians over the steps after the first
        "generate_share": median("generate_share"),
        "generate_tokens_per_s": median("generate_tokens_per_s"),
        "first_step_s": history[0].get("time/step_s"),
        "mismatch_kl_max": metrics.get("mismatch/kl_max"),
        "policy_loss_first_last": [history[0].get("policy_loss"), history[-1].get("policy_loss")],
        "reward_first_last": [history[0]["reward"], history[-1]["reward"]],
    }


def trl_grpo(policy: Path, size: str) -> dict:
    """TRL's GRPOTrainer on the same policy, prompts, group size, response length and reward."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pipeline.data import load_rows
    from reward_models.gold import reviews_gold

    s = SIZES[size]
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(policy)
    prompts = [{"prompt": row["prompt"]} for row in load_rows("demo:reviews/prompts", ["prompt"])]
    episodes = s["prompts_per_step"] * GROUP

    def gold(prompts, completions, **kwargs):
        return reviews_gold(prompts, completions)

    args = GRPOConfig(
        output_dir=str(policy.parent / "trl"),
        per_device_train_batch_size=episodes,
        num_generations=GROUP,
        max_completion_length=s["new_tokens"],
        max_steps=s["steps"],
        learning_rate=1e-5,
        temperature=1.0,
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=torch.cuda.is_available(),
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[gold],
        args=args,
        train_dataset=datasets.Dataset.from_list(prompts),
        processing_class=tokenizer,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "run": "trl-grpo",
        "trl": __import__("trl").__version__,
        "step_s": seconds / s["steps"],
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--only", nargs="*", choices=["fsdp2", "rollouts", "trl"], default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    import transformers

    print(
        json.dumps({"device": device, "torch": torch.__version__, "transformers": transformers.__version__})
    )
    policy = build_policy(out, args.size)
    parts = args.only or ["fsdp2", "rollouts", "trl"]
    results = []
    lora = {"enabled": True, "r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    if "fsdp2" in parts:
        ppo = rl_block(policy, args.size, algorithm="ppo", group_size=1, engine="fsdp2", lora=lora)
        ppo.update(batch_size=ppo["batch_size"] * GROUP, value_init="policy")
        results.append(run_stage(out, "ppo_lora_fsdp2", ppo))
        results.append(run_stage(out, "grpo_fsdp2", rl_block(policy, args.size, engine="fsdp2")))
    if "rollouts" in parts:
        for engine in ("hf", "compiled", "paged"):
            results.append(
                run_stage(out, f"grpo_{engine}", rl_block(policy, args.size, rollout={"engine": engine}))
            )
    if "trl" in parts:
        try:
            results.append(trl_grpo(policy, args.size))
        except Exception as exc:  # the peer is measured if it runs; its failure is reported, not hidden
            results.append({"run": "trl-grpo", "error": repr(exc)[-1500:]})
    for result in results:
        print(json.dumps(result))
    keys = [
        "run",
        "step_s",
        "generate_share",
        "generate_tokens_per_s",
        "peak_gpu_mb",
        "peak_rss_mb",
        "reward_first_last",
    ]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for result in results:
        print("| " + " | ".join(cell(result.get(key)) for key in keys) + " |")


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return " → ".join(cell(v) for v in value)
    return "" if value is None else str(value)


if __name__ == "__main__":
    main()
