"""Direct preference optimisation on {"prompt","chosen","rejected"} pairs (TRL's DPOTrainer): an offline
alternative to PPO that needs no reward model and no sampling; reports held-out implicit-reward accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.chat import conversation_ids
from pipeline.data import PREFERENCE, check_sources
from pipeline.stage_config import (
    LoraConfig,
    TrainingConfig,
    check_choice,
    check_positive,
    check_source,
    input_field,
)
from stages.base import StageContext, StageResult
from stages.hf_trainer import (
    last_checkpoint,
    rows_tokenizer_and_model,
    save_trained,
    trainer_arguments,
    trl_trainer_kwargs,
    truncation,
)


@dataclass
class DPOStageConfig(TrainingConfig):
    init_from: str = input_field("sft")  # the starting policy, which is also the frozen reference
    data: str = ""
    beta: float = 0.1  # strength of the implicit KL pull towards the reference
    loss_type: str = "sigmoid"  # one of LOSS_TYPES (sigmoid = the DPO paper's loss)
    max_length: int = 128  # prompt + completion tokens; longer pairs are cut at the end
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_source(self, "init_from")
        check_positive(self, "beta", "max_length")
        check_choice(self, "loss_type", LOSS_TYPES)


# TRL's DPO loss types that run on these keys (exo_pair also needs label smoothing, which is not one).
LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


Config = DPOStageConfig  # the stage registry's handle (stages/__init__.py)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """`Σ_t m_t · log softmax(z_{t-1})[x_t]` per row: the log-probability of the masked (completion) tokens,
    each predicted from the logits one position earlier. logits [B, T, V]; input_ids, mask [B, T] -> [B]."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = completion_mask[:, 1:].bool()
    return torch.where(mask, token_logprobs, 0.0).sum(-1)


def tokenize_pair(tokenizer, prompt, completion, max_length: int) -> tuple[list[int], list[int]]:
    """(ids, completion mask) as TRL's DPOTrainer builds its data: prompt and prompt + completion tokenized
    separately, the completion starting where the two diverge, and only the first max_length tokens kept
    (TRL's keep_start truncation). Text: EOS appended to the completion. Messages: the prompt rendered with
    the chat template's generation prompt, the whole conversation as the template renders it."""
    if isinstance(prompt, list):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)
        prompt_ids, ids = prompt_ids["input_ids"], conversation_ids(tokenizer, prompt + completion)
    else:
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        prompt_ids = tokenizer(text=prompt)["input_ids"]
        ids = tokenizer(text=prompt + completion)["input_ids"]
    start = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids))
    )
    return ids[:max_length], ([0] * start + [1] * (len(ids) - start))[:max_length]


@torch.no_grad()
def completion_logprobs(
    model, tokenizer, prompts: list[str], completions: list[str], max_length: int, batch_size: int = 32
) -> torch.Tensor:
    """log π(completion + EOS | prompt) of each row under `model`, summed over completion tokens only [N]."""
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    device = next(model.parameters()).device
    totals = []
    for i in range(0, len(prompts), batch_size):
        batch = zip(prompts[i : i + batch_size], completions[i : i + batch_size])
        pairs = [tokenize_pair(tokenizer, prompt, completion, max_length) for prompt, completion in batch]
        ids = [torch.tensor(token_ids) for token_ids, _ in pairs]
        # Right padding, so every row keeps the positions it was trained with.
        input_ids = pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id).to(device)
        attention_mask = pad_sequence([torch.ones_like(x) for x in ids], batch_first=True).to(device)
        mask = pad_sequence([torch.tensor(m) for _, m in pairs], batch_first=True).to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        totals.append(sequence_logprobs(logits, input_ids, mask).cpu())
    return torch.cat(totals)


def preference_logprobs(
    model, tokenizer, rows: list[dict], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [r["prompt"] for r in rows]
    chosen = completion_logprobs(model, tokenizer, prompts, [r["chosen"] for r in rows], max_length)
    rejected = completion_logprobs(model, tokenizer, prompts, [r["rejected"] for r in rows], max_length)
    return chosen, rejected


def implicit_reward_margins(policy: tuple, reference: tuple, beta: float) -> torch.Tensor:
    """Per pair, the implicit reward r = β·(log π - log π_ref) of chosen minus that of rejected.
    `policy` and `reference` are (chosen, rejected) log-probabilities, as from preference_logprobs."""
    return beta * ((policy[0] - reference[0]) - (policy[1] - reference[1]))


def preference_accuracy(margins: torch.Tensor) -> float:
    """Fraction of pairs ranked right (margin > 0); a tie counts half, so the untrained policy (π = π_ref,
    every margin 0) scores chance, 0.5."""
    return ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item()


def check(cfg: DPOStageConfig) -> None:
    """Validate the data up front, before any stage of the run trains."""
    check_sources(cfg.data, cfg.eval_data, PREFERENCE, "preference data")


def run(ctx: StageContext) -> StageResult:
    from trl import DPOConfig, DPOTrainer

    cfg: DPOStageConfig = ctx.config
    train_rows, eval_rows, tokenizer, model = rows_tokenizer_and_model(
        cfg, ctx, PREFERENCE, "preference data", "AutoModelForCausalLM"
    )
    # The starting policy is the reference: score the held-out pairs under it once, before any update.
    reference = preference_logprobs(model, tokenizer, eval_rows, cfg.max_length) if eval_rows else None

    args = DPOConfig(
        **trainer_arguments(cfg, ctx),
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        max_length=cfg.max_length,
        precompute_ref_log_probs=False,
        dataset_num_proc=None,
        trust_remote_code=cfg.trust_remote_code,  # TRL loads the reference itself
    )
    # ref_model=None: the reference is a frozen copy TRL loads, or with LoRA the adapter-disabled policy.
    trainer = DPOTrainer(
        ref_model=None, args=args, **trl_trainer_kwargs(ctx, cfg, model, tokenizer, train_rows, "CAUSAL_LM")
    )
    metrics = truncation(train_rows, tokenizer, cfg.max_length, ctx.name, ["chosen", "rejected"])
    if eval_rows:
        before = implicit_reward_margins(reference, reference, cfg.beta)  # all 0: π is still π_ref
        metrics["eval_accuracy_before"] = preference_accuracy(before)
    metrics["train_loss"] = trainer.train(resume_from_checkpoint=last_checkpoint(ctx)).training_loss
    if eval_rows:
        policy = preference_logprobs(trainer.model, tokenizer, eval_rows, cfg.max_length)
        margins = implicit_reward_margins(policy, reference, cfg.beta)
        metrics["eval_accuracy"] = preference_accuracy(margins)
        metrics["eval_margin"] = margins.mean().item()
        metrics["eval_pairs"] = float(len(eval_rows))
    save_trained(trainer, tokenizer, ctx.out_dir)
    return StageResult(metrics=metrics)
