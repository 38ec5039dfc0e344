#!/usr/bin/env python3
"""Peer run: current TRL's RLOOTrainer on the harness's local checkpoints (modelled on its trl_grpo.py).

Run in the trl-now venv (/work/shared/peers/setup_peers.sh). An episode is one generated completion, so
--episodes 256 with --num-generations 4 is 64 prompts, in 16 batches of --batch 16 completions, like
trl_grpo.py. Reward: the local reward model's score of prompt + completion. An optional gold scorer
(--gold FILE.py) is added as a second reward function with weight 0: logged, never optimised.
TRL's RLOO defaults kept: beta 0.05 (k1 log-ratio summed over the completion, subtracted from the reward),
normalize_advantages False, a sequence-level clipped ratio. Prints one JSON line:
  {"peer": "trl-<version>-rloo", "episodes": N, "wall_s": .., "episodes_per_s": .., "peak_rss_mb": .., ...}
"""

import argparse
import importlib.util
import json
import os
import resource
import tempfile
import time
import warnings

import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import RLOOConfig, RLOOTrainer

warnings.filterwarnings("ignore")

ap = argparse.ArgumentParser()
ap.add_argument("--tokenizer", required=True)
ap.add_argument("--policy", required=True)
ap.add_argument("--reward", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--episodes", type=int, default=256)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--num-generations", type=int, default=4)
ap.add_argument("--completion-length", type=int, default=16)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--temperature", type=float, default=0.7)
ap.add_argument("--beta", type=float, default=0.05)  # RLOOConfig's default
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument(
    "--gold", default="", help="optional FILE.py exposing gold(text) -> float, logged with weight 0"
)
ap.add_argument("--save-policy", default=None)
ap.add_argument(
    "--num-iterations", type=int, default=1
)  # TRL default 1; 4 = as many passes per batch as PPO's 4 epochs
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
tok = AutoTokenizer.from_pretrained(a.tokenizer)
tok.padding_side = "left"
pol = AutoModelForCausalLM.from_pretrained(a.policy)
rm = AutoModelForSequenceClassification.from_pretrained(a.reward, num_labels=1).eval()
rm.config.pad_token_id = tok.pad_token_id


def rm_reward(prompts, completions, **kw):
    enc = tok([p + c for p, c in zip(prompts, completions)], return_tensors="pt", padding=True)
    with torch.no_grad():
        return rm(**enc).logits.squeeze(-1).tolist()


funcs, weights = [rm_reward], [1.0]
if a.gold and os.path.exists(a.gold):
    spec = importlib.util.spec_from_file_location("gold_scorer", a.gold)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def gold_reward(prompts, completions, **kw):
        return [float(mod.gold(c)) for c in completions]

    funcs.append(gold_reward)
    weights.append(0.0)

prompts = [json.loads(line)["prompt"] for line in open(a.prompts)]
steps = (
    a.episodes // a.batch * a.num_iterations
)  # RLOO, like GRPO, generates once per num_iterations optimizer steps
cfg = RLOOConfig(
    output_dir=tempfile.mkdtemp(prefix="peer-trl-rloo-"),
    max_steps=steps,
    per_device_train_batch_size=a.batch,
    gradient_accumulation_steps=1,
    num_generations=a.num_generations,
    max_completion_length=a.completion_length,
    temperature=a.temperature,
    learning_rate=a.lr,
    num_iterations=a.num_iterations,
    beta=a.beta,
    reward_weights=weights,
    report_to=[],
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,  # TRL defaults are bf16=True, gradient_checkpointing=True
    save_strategy="no",
    logging_steps=1,
    seed=a.seed,
    dataloader_num_workers=0,
)
tr = RLOOTrainer(
    model=pol,
    reward_funcs=funcs,
    args=cfg,
    train_dataset=Dataset.from_dict({"prompt": prompts}),
    processing_class=tok,
)
t = time.time()
tr.train()
wall = time.time() - t
hist = [row for row in tr.state.log_history if "reward" in row]
n_ep = steps // a.num_iterations * a.batch
g = "rewards/gold_reward/mean"
res = {
    "peer": f"trl-{trl.__version__}-rloo",
    "episodes": n_ep,
    "wall_s": round(wall, 2),
    "episodes_per_s": round(n_ep / wall, 2),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "reward_first": hist[0]["reward"] if hist else None,
    "reward_last": hist[-1]["reward"] if hist else None,
    "gold_first": hist[0].get(g) if hist else None,
    "gold_last": hist[-1].get(g) if hist else None,
    "kl_last": hist[-1].get("kl") if hist else None,
    "num_iterations": a.num_iterations,
    "completion_len_last": hist[-1].get("completions/mean_length") if hist else None,
}
if a.save_policy:
    tr.model.save_pretrained(a.save_policy)
print(json.dumps(res))
