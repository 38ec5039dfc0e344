#!/usr/bin/env python3
"""Direct call: TRL's SFTTrainer on {"prompt","completion"} rows, the work `rlhf stage sft` does.

Same arguments as bench/train.yaml and stages/sft.py (completion-only loss, no packing, max_length 128).
Prints one JSON line with the Trainer's train runtime, the tokens per epoch (prompt + completion, after
SFTTrainer's own tokenization) and tokens/s:
  trl_sft.py --policy DIR --data sft.jsonl --out DIR [--epochs 2] [--batch 32] [--lr 2e-3]
"""

import argparse
import json
import resource
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
ap.add_argument("--policy", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--epochs", type=float, default=2)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--max-length", type=int, default=128)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(a.threads)
tok = AutoTokenizer.from_pretrained(a.policy)
model = AutoModelForCausalLM.from_pretrained(a.policy)
rows = [json.loads(line) for line in open(a.data)]
args = SFTConfig(
    output_dir=tempfile.mkdtemp(prefix="trl-sft-"),
    num_train_epochs=a.epochs,
    per_device_train_batch_size=a.batch,
    learning_rate=a.lr,
    lr_scheduler_type="linear",
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    seed=a.seed,
    data_seed=a.seed,
    bf16=False,
    gradient_checkpointing=False,
    dataloader_num_workers=0,
    dataloader_pin_memory=False,
    max_length=a.max_length,
    completion_only_loss=True,
    packing=False,
)
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
tokens_per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
out = trainer.train()
trainer.save_model(a.out)
print(
    json.dumps(
        {
            "peer": "trl-SFTTrainer",
            "train_tokens_per_epoch": tokens_per_epoch,
            "train_runtime_s": round(out.metrics["train_runtime"], 2),
            "tokens_per_s": round(tokens_per_epoch * a.epochs / out.metrics["train_runtime"], 1),
            "train_loss": round(out.training_loss, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    )
)
