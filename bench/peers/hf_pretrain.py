#!/usr/bin/env python3
"""Direct call: causal-LM pretraining with a plain transformers Trainer, the work `rlhf stage pretrain` does.

Same model (Llama, from a config), same packing (documents ended by EOS, cut into --block-size blocks, tail
dropped), same Trainer arguments as bench/train.yaml. Prints one JSON line with the Trainer's own train
runtime, the tokens trained on and tokens/s:
  hf_pretrain.py --tokenizer DIR --corpus corpus.jsonl --out DIR [--epochs 2] [--batch 32] [--lr 3e-3]
"""

import argparse
import json
import resource
import tempfile

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaConfig,
    Trainer,
    TrainingArguments,
)

ap = argparse.ArgumentParser()
ap.add_argument("--tokenizer", required=True)
ap.add_argument("--corpus", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--epochs", type=float, default=2)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--warmup-ratio", type=float, default=0.05)
ap.add_argument("--block-size", type=int, default=64)
ap.add_argument("--hidden", type=int, default=64)
ap.add_argument("--layers", type=int, default=2)
ap.add_argument("--heads", type=int, default=4)
ap.add_argument("--intermediate", type=int, default=256)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(a.threads)
tok = AutoTokenizer.from_pretrained(a.tokenizer)
texts = [json.loads(line)["text"] for line in open(a.corpus)]
stream = []
for ids in tok(texts, add_special_tokens=False)["input_ids"]:
    stream.extend(ids + [tok.eos_token_id])
blocks = [
    {"input_ids": stream[i : i + a.block_size]}
    for i in range(0, len(stream) - a.block_size + 1, a.block_size)
]
cfg = LlamaConfig(
    vocab_size=len(tok),
    hidden_size=a.hidden,
    num_hidden_layers=a.layers,
    num_attention_heads=a.heads,
    num_key_value_heads=a.heads,
    intermediate_size=a.intermediate,
    max_position_embeddings=128,
    pad_token_id=tok.pad_token_id,
    bos_token_id=tok.bos_token_id,
    eos_token_id=tok.eos_token_id,
    tie_word_embeddings=True,
)
torch.manual_seed(a.seed)
model = AutoModelForCausalLM.from_config(cfg)
args = TrainingArguments(
    output_dir=tempfile.mkdtemp(prefix="hf-pretrain-"),
    num_train_epochs=a.epochs,
    per_device_train_batch_size=a.batch,
    learning_rate=a.lr,
    warmup_steps=a.warmup_ratio,
    lr_scheduler_type="linear",
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    seed=a.seed,
    data_seed=a.seed,
    bf16=False,
    dataloader_num_workers=0,
    dataloader_pin_memory=False,
)
trainer = Trainer(
    model=model,
    args=args,
    train_dataset=Dataset.from_list(blocks),
    data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    processing_class=tok,
)
out = trainer.train()
trainer.save_model(a.out)
tok.save_pretrained(a.out)
tokens = len(blocks) * a.block_size * a.epochs
print(
    json.dumps(
        {
            "peer": "transformers-Trainer-pretrain",
            "train_tokens_per_epoch": len(blocks) * a.block_size,
            "train_runtime_s": round(out.metrics["train_runtime"], 2),
            "tokens_per_s": round(tokens / out.metrics["train_runtime"], 1),
            "train_loss": round(out.training_loss, 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    )
)
