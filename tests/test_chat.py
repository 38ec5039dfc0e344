"""Conversational data in every stage: the formats, the chat template, and what each stage trains on."""

from __future__ import annotations

import json

import pytest
from conftest import CHAT_TEMPLATE, ROLE_MARKERS

from pipeline.chat import assistant_tokens, conversation_ids, render_prompt
from pipeline.data import PREFERENCE, PROMPT_COMPLETION, PROMPT_ONLY, load_rows
from pipeline.errors import ConfigError, DataError

SYSTEM = {"role": "system", "content": "be brief ."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


MULTI_TURN = [SYSTEM, user("q one"), assistant("a one ."), user("q two"), assistant("a two .")]
# ChatML, as Qwen's templates write it: a newline follows each turn's end marker
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A tiny BPE tokenizer with the demo's role markers as special tokens and its chat template."""
    from pathlib import Path

    from pipeline.tokenizer_training import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["q one a one . q two a two . be brief ."] * 20, 300)
    tokenizer.add_special_tokens({"additional_special_tokens": ROLE_MARKERS + ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = Path(CHAT_TEMPLATE).read_text()
    return tokenizer


# ---------------------------------------------------------------- formats
def test_each_conversational_format_loads_and_an_implicit_prompt_becomes_explicit(tmp_path):
    sft = [{"messages": MULTI_TURN}, {"messages": [user("hi"), assistant("yo .")]}]
    assert load_rows(write_jsonl(tmp_path / "sft.jsonl", sft), PROMPT_COMPLETION) == sft
    pair = [{"prompt": [SYSTEM, user("hi")], "completion": [assistant("yo .")]}]
    assert load_rows(write_jsonl(tmp_path / "pc.jsonl", pair), PROMPT_COMPLETION) == pair
    implicit = {"chosen": [user("hi"), assistant("good .")], "rejected": [user("hi"), assistant("bad .")]}
    rows = load_rows(write_jsonl(tmp_path / "prefs.jsonl", [implicit]), PREFERENCE)
    assert rows == [
        {"prompt": [user("hi")], "chosen": [assistant("good .")], "rejected": [assistant("bad .")]}
    ]
    prompts = [{"prompt": [SYSTEM, user("hi")]}]
    assert load_rows(write_jsonl(tmp_path / "prompts.jsonl", prompts), PROMPT_ONLY) == prompts


@pytest.mark.parametrize(
    "rows, columns, message",
    [
        (
            [{"messages": MULTI_TURN}, {"prompt": "a", "completion": "b"}],
            PROMPT_COMPLETION,
            "line 2: plain strings, but the first row holds lists of messages",
        ),
        (
            [{"prompt": "a", "completion": "b"}, {"messages": MULTI_TURN}],
            PROMPT_COMPLETION,
            "line 2: lists of messages, but the first row holds plain strings",
        ),
        ([{"messages": [user("hi")]}], PROMPT_COMPLETION, "field 'messages' has no assistant turn"),
        (
            [{"messages": [{"role": "bot", "content": "x"}]}],
            PROMPT_COMPLETION,
            "message 0 has role 'bot'; expected one of system, user, assistant, tool",
        ),
        (
            [{"messages": [{"role": "user"}]}],
            PROMPT_COMPLETION,
            "message 0 (user) must have a string 'content'",
        ),
        (
            [{"prompt": [user("hi")], "completion": "yo"}],
            PROMPT_COMPLETION,
            "field 'completion' must be a non-empty list of messages",
        ),
        (
            [{"messages": MULTI_TURN, "id": 3}],
            PROMPT_COMPLETION,
            "must have exactly the fields (messages) or (prompt, completion)",
        ),
        ([{"prompt": [user("hi"), assistant("yo")]}], PROMPT_ONLY, "the prompt ends with an assistant turn"),
        (
            [{"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("y")]}],
            PREFERENCE,
            "'chosen' and 'rejected' must start with the same messages",
        ),
        (
            [{"prompt": [user("a")], "chosen": [assistant("x")], "rejected": [assistant("x")]}],
            PREFERENCE,
            "'chosen' and 'rejected' are identical",
        ),
        ([{"messages": MULTI_TURN}], ("text",), "lists of messages are not accepted in this data"),
    ],
)
def test_bad_conversational_rows_are_refused_naming_the_row(tmp_path, rows, columns, message):
    with pytest.raises(DataError, match="line [12]") as caught:
        load_rows(write_jsonl(tmp_path / "bad.jsonl", rows), columns)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "value, message",
    [
        ("configs/no-such-template.jinja", "neither an existing file nor a Jinja template string"),
        ("{% for m in messages %}{{ m['content'] }}", "not a valid Jinja template"),
    ],
)
def test_a_bad_chat_template_key_is_refused_at_config_load(value, message):
    from pipeline.config import load_config

    block = {"kind": "sft", "init_from": "x", "data": "demo:chat/sft", "chat_template": value}
    with pytest.raises(ConfigError, match="chat_template") as caught:
        load_config(None, data={"stages": {"sft": block}})
    assert message in str(caught.value)


def test_the_chat_template_key_takes_a_file_or_the_template_itself():
    from pipeline.config import load_config

    for value in (CHAT_TEMPLATE, CHATML):
        block = {"kind": "sft", "init_from": "x", "data": "demo:chat/sft", "chat_template": value}
        assert load_config(None, data={"stages": {"sft": block}}).stages["sft"].chat_template == value


# ---------------------------------------------------------------- rendering
def turns_carrying_loss(tokenizer, ids, mask) -> str:
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


def test_assistant_tokens_are_exactly_the_assistant_turns_of_a_multi_turn_conversation(chat_tokenizer):
    ids, mask = assistant_tokens(chat_tokenizer, MULTI_TURN)
    assert ids == conversation_ids(chat_tokenizer, MULTI_TURN)  # the tokens TRL would build
    assert turns_carrying_loss(chat_tokenizer, ids, mask) == "a one .</s>a two .</s>"
    # a prompt/completion row trains only the completion's assistant turns
    ids, mask = assistant_tokens(chat_tokenizer, MULTI_TURN, first_trained=3)
    assert turns_carrying_loss(chat_tokenizer, ids, mask) == "a two .</s>"
    # the untrained side is everything else: system, user turns and the role markers before each reply
    untrained = chat_tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert (
        untrained
        == "<|system|>be brief .</s><|user|>q one</s><|assistant|>a one .</s><|user|>q two</s><|assistant|>"
    )


def test_assistant_turns_under_a_chatml_template(chat_tokenizer, tmp_path):
    chat_tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = CHATML
    ids, mask = assistant_tokens(tokenizer, MULTI_TURN)
    assert turns_carrying_loss(tokenizer, ids, mask) == "a one .<|im_end|>\na two .<|im_end|>\n"
    assert render_prompt(tokenizer, MULTI_TURN[:2]).endswith("<|im_start|>assistant\n")


def test_a_template_that_rewrites_earlier_turns_is_refused(chat_tokenizer, tmp_path):
    """Like templates that drop earlier turns' reasoning: the start of a conversation renders differently
    once more turns follow, so the turns cannot be located by rendering."""
    chat_tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[last]{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(DataError, match="renders the start of a conversation differently"):
        assistant_tokens(tokenizer, MULTI_TURN)


# ---------------------------------------------------------------- what each stage trains on
def run_stage(kind: str, block: dict, out):
    from pipeline.config import load_config
    from pipeline.runner import run_standalone

    config = load_config(None, data={"threads": 2, "stages": {kind: {"kind": kind, **block}}})
    run_standalone(config, kind, None, out)
    return json.loads((out / "rlhf_stage.json").read_text())["metrics"]


def spy_on(monkeypatch, module, name: str) -> dict:
    """Replace trainer class `module.name` by a subclass that keeps the instance, to read its dataset."""
    caught = {}
    original = getattr(module, name)

    class Spy(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            caught["trainer"] = self

    monkeypatch.setattr(module, name, Spy)
    return caught


def training_rows(source: str, columns, fraction: float) -> list[dict]:
    from pipeline.data import split_rows

    return split_rows(load_rows(source, columns), fraction, seed=0)[0]


def rendered(messages: list[dict]) -> str:
    """The demo template written out by hand: a role marker, the content, EOS, for each turn."""
    return "".join(f"<|{m['role']}|>{m['content']}</s>" for m in messages)


def test_sft_on_conversations_puts_loss_on_exactly_the_assistant_turns(chat_run, tmp_path, monkeypatch):
    import trl
    from transformers import AutoTokenizer

    caught = spy_on(monkeypatch, trl, "SFTTrainer")
    block = {"init_from": str(chat_run / "sft"), "data": "demo:chat/sft", "max_steps": 1, "max_length": 160}
    run_stage("sft", block, tmp_path / "sft")
    tokenizer = AutoTokenizer.from_pretrained(chat_run / "sft")
    examples = caught["trainer"].train_dataset
    rows = training_rows("demo:chat/sft", PROMPT_COMPLETION, 0.05)
    assert len(examples) == len(rows)
    multi_turn = 0
    for row, example in list(zip(rows, examples))[:64]:
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        multi_turn += len(replies) > 1
        trained = [i for i, label in zip(example["input_ids"], example["labels"]) if label != -100]
        assert tokenizer.decode(trained) == "".join(f"{reply}</s>" for reply in replies)
        assert tokenizer.decode(example["input_ids"]) == rendered(row["messages"])
    assert multi_turn > 0
    # and the chat run's SFT learned: held-out loss on the assistant turns fell
    metrics = json.loads((chat_run / "sft" / "rlhf_stage.json").read_text())["metrics"]
    assert metrics["eval_loss"] < metrics["eval_loss_before"]


def test_conversational_data_without_a_chat_template_is_refused_naming_the_key(tiny_run, tmp_path):
    block = {"init_from": str(tiny_run / "sft"), "data": "demo:chat/sft", "max_steps": 1}
    with pytest.raises(ConfigError, match="has no chat template. Set `chat_template`"):
        run_stage("sft", block, tmp_path / "sft")
    assert not (tmp_path / "sft" / "rlhf_stage.json").exists()
    # the same data with the key set trains
    metrics = run_stage("sft", {**block, "chat_template": CHAT_TEMPLATE}, tmp_path / "with-template")
    assert metrics["train_loss"] > 0


def test_the_reward_model_trains_on_and_scores_the_templated_conversation(chat_run, tmp_path, monkeypatch):
    import trl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reward_models.learned import LearnedRewardModel

    caught = spy_on(monkeypatch, trl, "RewardTrainer")
    block = {"init_from": str(chat_run / "sft"), "data": "demo:chat/prefs", "max_steps": 1, "max_length": 160}
    run_stage("reward", block, tmp_path / "reward")
    tokenizer = AutoTokenizer.from_pretrained(chat_run / "reward")
    model = AutoModelForSequenceClassification.from_pretrained(chat_run / "reward")
    scorer = LearnedRewardModel(model, tokenizer)
    rows = training_rows("demo:chat/prefs", PREFERENCE, 0.05)
    for row, example in list(zip(rows, caught["trainer"].train_dataset))[:32]:
        conversation = row["prompt"] + row["chosen"]
        assert tokenizer.decode(example["chosen_ids"]) == rendered(conversation)
        assert scorer.encode([row["prompt"]], [row["chosen"]]) == [example["chosen_ids"]]
    metrics = json.loads((chat_run / "reward" / "rlhf_stage.json").read_text())["metrics"]
    assert metrics["eval_accuracy"] > metrics["eval_accuracy_before"]


def test_dpo_on_conversational_pairs_scores_the_tokens_trl_trains_on(chat_run, tmp_path, monkeypatch):
    import trl
    from transformers import AutoTokenizer

    from stages.dpo import tokenize_pair

    caught = spy_on(monkeypatch, trl, "DPOTrainer")
    block = {"init_from": str(chat_run / "sft"), "data": "demo:chat/prefs", "max_steps": 6, "lr": 3e-3}
    metrics = run_stage("dpo", {**block, "batch_size": 32, "max_length": 160}, tmp_path / "dpo")
    tokenizer = AutoTokenizer.from_pretrained(chat_run / "sft")
    rows = training_rows("demo:chat/prefs", PREFERENCE, 0.05)
    for row, example in list(zip(rows, caught["trainer"].train_dataset))[:32]:
        ids, mask = tokenize_pair(tokenizer, row["prompt"], row["chosen"], 160)
        assert ids == example["prompt_ids"] + example["chosen_ids"]
        assert mask == [0] * len(example["prompt_ids"]) + [1] * len(example["chosen_ids"])
        assert tokenizer.decode(example["prompt_ids"]) == rendered(row["prompt"]) + "<|assistant|>"
    assert metrics["eval_accuracy"] > metrics["eval_accuracy_before"]


RECORDED: list[tuple[list, list]] = []


def recording_reward(prompts, completions, **kwargs):
    RECORDED.append((prompts, completions))
    return [0.0] * len(completions)


def test_rl_samples_after_the_generation_prompt_and_rewards_see_the_messages(chat_run, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import stages.rl.stage as rl_stage
    from reward_models.learned import LearnedRewardModel

    encoded, scored = [], []
    encode = rl_stage.encode_prompts
    monkeypatch.setattr(
        rl_stage,
        "encode_prompts",
        lambda tok, prompts, *a: encoded.extend(prompts) or encode(tok, prompts, *a),
    )
    encode_for_model = LearnedRewardModel.encode
    monkeypatch.setattr(
        LearnedRewardModel, "encode", lambda self, p, c: scored.append((p, c)) or encode_for_model(self, p, c)
    )
    RECORDED.clear()
    block = {
        "policy": str(chat_run / "sft"),
        "reward_model": str(chat_run / "reward"),
        "reward_functions": {f"{__name__}:recording_reward": 1.0},
        "prompts": "demo:chat/prompts",
        "max_prompt_length": 128,
        "total_episodes": 32,
        "batch_size": 16,
        "minibatch_size": 8,
        "max_new_tokens": 8,
    }
    metrics = run_stage("ppo", block, tmp_path / "ppo")
    tokenizer = AutoTokenizer.from_pretrained(chat_run / "sft")
    originals = [row["prompt"] for row in load_rows("demo:chat/prompts", PROMPT_ONLY)]
    assert encoded == [render_prompt(tokenizer, p) for p in originals]
    assert all(text.endswith("</s><|assistant|>") for text in encoded)
    prompts, completions = RECORDED[0]
    assert len(RECORDED) == 2 and all(p in originals for p in prompts)
    assert all(
        len(c) == 1 and c[0]["role"] == "assistant" and "<|" not in c[0]["content"] for c in completions
    )
    # the learned reward model got the same conversations, and re-renders them whole (not the sampled ids)
    assert scored and scored[0] == (prompts, completions)
    history = json.loads((tmp_path / "ppo" / "history.json").read_text())
    assert (
        metrics["steps"] == 2 and history[0]["kl"] == 0.0
    )  # nothing updated yet: the policy is the reference


def test_the_chat_pipeline_evaluates_conversations(chat_run):
    samples = [json.loads(line) for line in (chat_run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert all(s["prompt"].startswith("system: you write short reviews") for s in samples)
    assert all(" | user: " in s["prompt"] for s in samples)
    assert not any("<|" in s["completion"] or "</s>" in s["completion"] for s in samples)
    metrics = json.loads((chat_run / "eval" / "metrics.json").read_text())
    assert set(metrics["differences"]) == {"gold", "reward_model"}
