"""Our RL, pretraining and SFT stages against the peers users would otherwise pick, side by side in one run.

  .venv/bin/python bench/compare_peers.py [--reps 2] [--threads 2] [--grpo-iterations 1,4]
                                          [--only ppo,grpo,rloo,same-reward,memory,train] [--render]

From a clean checkout it builds what is missing (peer venvs under .peers/ with the shared harness's
setup_peers.sh; the demo "reviews" task exported with `rlhf data`; the harness's tiny checkpoints with its
make_tiny.py), then runs, interleaved so both sides see the same machine load:
  ppo     our `rl` stage (algorithm ppo; also with LoRA) vs TRL 1.9.2's experimental PPOTrainer
  grpo    our `rl` stage (algorithm grpo) vs TRL's current GRPOTrainer (num_iterations 4 = our ppo_epochs 4)
  rloo    our `rl` stage (algorithm rloo) vs TRL's current RLOOTrainer (bench/peers/trl_rloo.py)
  same-reward  also our GRPO/RLOO scored with the harness's reward (bench/harness_reward.py)
  memory  peak RSS of PPO on a 34M-parameter random model: ours full, ours LoRA, TRL 1.9.2 full
  train   our pretrain / sft stages vs the same plain transformers Trainer / TRL SFTTrainer call
Every RL run has the same model, data, seed and hyper-parameters on both sides (bench/rl.yaml mirrors the
harness's settings); the gold gain is scored with the harness's score_gold.py on the held-out prompts, the
same way for every policy. Rep r uses seed r on both sides; reps alternate which side runs first.
Prints the ratio table and writes it with every raw figure to .peers-results/ (results.jsonl, summary.json,
tables.md, logs/).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    HARNESS,
    OURS,
    ROOT,
    engine_fingerprint,
    ensure_data,
    ensure_peers,
    ensure_tiny,
    load_line,
    machine,
    our_history,
    run,
    trainer_runtime,
)
from bench.tables import render, summarise  # noqa: E402

MEMORY_SIZE = (512, 8)  # hidden, layers of the random model for the memory comparison: 34M parameters


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.results = Path(args.results).resolve()
        self.peers = Path(args.peers).resolve()
        self.runs = self.results / "runs"
        self.logs = self.results / "logs"
        self.records: list[dict] = []
        self.jsonl = self.results / "results.jsonl"

    # ------------------------------------------------------------------ bookkeeping
    def record(self, **fields) -> dict:
        self.records.append(fields)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(fields) + "\n")
        shown = {
            k: fields[k]
            for k in ("side", "run", "rep", "episodes_per_s", "wall_s", "peak_rss_mb")
            if k in fields
        }
        print("  " + json.dumps(shown), flush=True)
        return fields

    def peer_python(self, venv: str) -> str:
        return str(self.peers / venv / "bin" / "python")

    # ------------------------------------------------------------------ RL runs
    def ours_rl(
        self, run_name: str, stage: str, rep: int, policy: Path, reward: Path, extra=(), env=None
    ) -> dict:
        out = self.runs / f"ours-{run_name}-r{rep}"
        cmd = [
            str(OURS / "rlhf"),
            "stage",
            stage,
            "--config",
            str(ROOT / "bench" / "rl.yaml"),
            "--init-from",
            str(policy),
            "--out",
            str(out),
            f"stages.{stage}.reward_model={reward}",
            f"stages.{stage}.prompts={self.results / 'data' / 'prompts_bos.jsonl'}",
            f"threads={self.args.threads}",
            f"seed={rep}",
            *extra,
        ]
        done = run(cmd, log=self.logs / f"ours-{run_name}-r{rep}.log", env=env)
        history = our_history(out)
        loop_s = history[-1]["elapsed_s"]
        episodes = history[-1]["episodes"]
        return self.record(
            side="ours",
            run=run_name,
            rep=rep,
            policy=str(out),
            episodes=episodes,
            loop_s=loop_s,
            episodes_per_s=episodes / loop_s,
            wall_s=done.wall_s,
            peak_rss_mb=done.peak_rss_mb,
            reward_first=history[0]["reward"],
            reward_last=history[-1]["reward"],
            kl_last=history[-1]["kl"],
            response_length_last=history[-1]["response_length"],
            load=[done.load_before, done.load_after],
        )

    def peer_rl(self, run_name: str, script: Path, venv: str, rep: int, ck: dict, args: list[str]) -> dict:
        out = self.runs / f"peer-{run_name}-r{rep}"
        cmd = [
            self.peer_python(venv),
            str(script),
            "--tokenizer",
            str(ck["tokenizer"]),
            "--policy",
            str(ck["policy"]),
            "--reward",
            str(ck["reward"]),
            "--prompts",
            str(self.results / "data" / "prompts.jsonl"),
            "--threads",
            str(self.args.threads),
            "--seed",
            str(rep),
            "--save-policy",
            str(out),
            *args,
        ]
        done = run(cmd, log=self.logs / f"peer-{run_name}-r{rep}.log")
        own = done.last_json()
        return self.record(
            side="peer",
            run=run_name,
            rep=rep,
            policy=str(out),
            peer=own.get("peer"),
            episodes=own["episodes"],
            loop_s=own["wall_s"],
            episodes_per_s=own["episodes_per_s"],
            wall_s=done.wall_s,
            peak_rss_mb=done.peak_rss_mb,
            reward_first=own.get("scores_first", own.get("reward_first")),
            reward_last=own.get("scores_last", own.get("reward_last")),
            kl_last=own.get("kl_last"),
            load=[done.load_before, done.load_after],
        )

    def rl_pairs(self, tiny: Path) -> list[tuple]:
        """(name, peer call, our calls) for each RL comparison selected with --only; a call takes the rep."""
        ck = {"tokenizer": tiny / "tokenizer", "policy": tiny / "policy", "reward": tiny / "reward"}
        policy, reward = tiny / "ours" / "policy", tiny / "ours" / "reward"
        gold = str(ROOT / "bench" / "gold.py")
        ppo_args = ["--episodes", "256", "--batch", "16", "--response-length", "16"]
        group_args = [
            "--episodes",
            "256",
            "--batch",
            "16",
            "--num-generations",
            "4",
            "--completion-length",
            "16",
        ]
        # the harness's reward (RM on prompt + completion text, no EOS) as a reward function of our stage
        same_reward = [
            '{"bench.harness_reward:score": 1.0}',
            {"PYTHONPATH": str(ROOT), "BENCH_REWARD_MODEL": str(reward)},
        ]
        pairs = []
        if "ppo" in self.args.only:
            peer = functools.partial(
                self.peer_rl, "ppo", HARNESS / "trl_ppo.py", "trl192", ck=ck, args=ppo_args
            )
            ours = [
                functools.partial(self.ours_rl, "ppo", "ppo", policy=policy, reward=reward),
                functools.partial(self.ours_rl, "ppo_lora", "ppo_lora", policy=policy, reward=reward),
                functools.partial(self.ours_rl, "ppo_shared", "ppo_shared", policy=policy, reward=reward),
                functools.partial(
                    self.ours_rl, "ppo_lora_shared", "ppo_lora_shared", policy=policy, reward=reward
                ),
            ]
            pairs.append(("ppo", peer, ours))
        peers = {"grpo": HARNESS / "trl_grpo.py", "rloo": ROOT / "bench" / "peers" / "trl_rloo.py"}
        for iterations in self.args.grpo_iterations:
            for algorithm, script in peers.items():
                if algorithm not in self.args.only:
                    continue
                name = f"{algorithm}{iterations}"
                args = [*group_args, "--num-iterations", str(iterations), "--gold", gold]
                peer = functools.partial(self.peer_rl, name, script, "trl-now", ck=ck, args=args)
                epochs = f"stages.{algorithm}.ppo_epochs={iterations}"
                ours = [
                    functools.partial(
                        self.ours_rl, name, algorithm, policy=policy, reward=reward, extra=[epochs]
                    )
                ]
                if "same-reward" in self.args.only:
                    extra = [epochs, f"stages.{algorithm}.reward_functions={same_reward[0]}"]
                    extra.append(f"stages.{algorithm}.reward_model=null")
                    ours.append(
                        functools.partial(
                            self.ours_rl,
                            f"{name}-same-reward",
                            algorithm,
                            policy=policy,
                            reward=reward,
                            extra=extra,
                            env=same_reward[1],
                        )
                    )
                pairs.append((name, peer, ours))
        return pairs

    def gold(self, tiny: Path, policy: str, tokenizer: Path | None = None) -> float:
        cmd = [
            self.peer_python("trl192"),
            str(HARNESS / "score_gold.py"),
            "--gold",
            str(ROOT / "bench" / "gold.py"),
            "--tokenizer",
            str(tokenizer or tiny / "tokenizer"),
            "--policy",
            policy,
            "--eval-prompts",
            str(self.results / "data" / "eval_prompts.jsonl"),
            "--n",
            "8",
            "--temperature",
            "0.7",
            "--max-new-tokens",
            "16",
            "--threads",
            str(self.args.threads),
        ]
        return run(cmd, log=self.logs / f"gold-{Path(policy).name}.log").last_json()["gold_mean"]

    # ------------------------------------------------------------------ memory at a larger size
    def memory(self, tiny: Path) -> None:
        hidden, layers = MEMORY_SIZE
        sized = self.results / "sized" / f"h{hidden}-l{layers}"
        run(
            [
                str(OURS / "python"),
                str(ROOT / "bench" / "make_sized.py"),
                "--tokenizer",
                str(tiny / "tokenizer"),
                "--out",
                str(sized),
                "--hidden",
                str(hidden),
                "--layers",
                str(layers),
            ]
        )
        ck = {"tokenizer": sized / "policy", "policy": sized / "policy", "reward": sized / "reward"}
        episodes = ["stages.{}.total_episodes=32"]
        for rep in range(self.args.reps):
            self.peer_rl(
                f"ppo-mem-h{hidden}",
                HARNESS / "trl_ppo.py",
                "trl192",
                rep,
                ck,
                ["--episodes", "32", "--batch", "16", "--response-length", "16"],
            )
            for stage in ("ppo", "ppo_lora", "ppo_shared", "ppo_lora_shared"):
                self.ours_rl(
                    f"{stage}-mem-h{hidden}",
                    stage,
                    rep,
                    sized / "policy",
                    sized / "reward",
                    [e.format(stage) for e in episodes],
                )

    # ------------------------------------------------------------------ pretraining and SFT
    def train(self, tiny: Path) -> None:
        threads = str(self.args.threads)
        data = self.results / "data"
        for rep in range(self.args.reps):
            for kind in ("pretrain", "sft"):
                out = self.runs / f"peer-{kind}-r{rep}"
                if kind == "pretrain":
                    cmd = [
                        self.peer_python("trl-now"),
                        str(ROOT / "bench" / "peers" / "hf_pretrain.py"),
                        "--tokenizer",
                        str(tiny / "tokenizer"),
                        "--corpus",
                        str(data / "corpus.jsonl"),
                    ]
                else:
                    cmd = [
                        self.peer_python("trl-now"),
                        str(ROOT / "bench" / "peers" / "trl_sft.py"),
                        "--policy",
                        str(tiny / "ours" / "policy"),
                        "--data",
                        str(data / "sft.jsonl"),
                    ]
                done = run(
                    [*cmd, "--out", str(out), "--threads", threads], log=self.logs / f"peer-{kind}-r{rep}.log"
                )
                own = done.last_json()
                tokens = own["train_tokens_per_epoch"] * 2  # 2 epochs, as bench/train.yaml
                self.record(
                    side="peer",
                    run=kind,
                    rep=rep,
                    peer=own["peer"],
                    tokens=tokens,
                    train_runtime_s=own["train_runtime_s"],
                    tokens_per_s=own["tokens_per_s"],
                    wall_s=done.wall_s,
                    peak_rss_mb=done.peak_rss_mb,
                    train_loss=own["train_loss"],
                )
                out = self.runs / f"ours-{kind}-r{rep}"
                ours = run(
                    [
                        str(OURS / "rlhf"),
                        "stage",
                        kind,
                        "--config",
                        str(ROOT / "bench" / "train.yaml"),
                        "--out",
                        str(out),
                        f"threads={threads}",
                        f"stages.pretrain.data={data / 'corpus.jsonl'}",
                        f"stages.sft.data={data / 'sft.jsonl'}",
                        f"stages.pretrain.model.tokenizer={tiny / 'ours' / 'policy'}",
                        f"stages.sft.init_from={tiny / 'ours' / 'policy'}",
                    ],
                    log=self.logs / f"ours-{kind}-r{rep}.log",
                )
                metrics = json.loads((out / "rlhf_stage.json").read_text()).get("metrics", {})
                # our pretrain stage reports its tokens per epoch; SFT does not: it has the same data and
                # tokenizer as the direct call, so that count is used
                our_tokens = metrics.get("train_tokens", own["train_tokens_per_epoch"]) * 2
                runtime = trainer_runtime(ours.output)
                self.record(
                    side="ours",
                    run=kind,
                    rep=rep,
                    tokens=our_tokens,
                    train_runtime_s=runtime,
                    tokens_per_s=our_tokens / runtime if runtime else None,
                    wall_s=ours.wall_s,
                    peak_rss_mb=ours.peak_rss_mb,
                    train_loss=metrics.get("train_loss"),
                )

    # ------------------------------------------------------------------ everything
    def main(self) -> None:
        a = self.args
        self.results.mkdir(parents=True, exist_ok=True)
        self.jsonl.write_text("")
        print(f"peer venvs: {self.peers}", flush=True)
        ensure_peers(self.peers)
        data = ensure_data(self.results)
        tiny = ensure_tiny(self.peers, data, self.results, a.threads)
        info = machine()
        info["load_at_start"] = load_line()
        info["engine_files"] = engine_fingerprint()
        print(f"machine: {json.dumps(info)}", flush=True)
        started = time.time()
        pairs = self.rl_pairs(tiny)
        for rep in range(a.reps):
            for name, peer, ours in pairs:
                print(f"[rep {rep}] {name}  ({load_line()})", flush=True)
                calls = [peer, *ours] if rep % 2 == 0 else [*ours, peer]
                for call in calls:
                    call(rep)
        if pairs:
            print(
                "gold scores of the policies (score_gold.py, 8 samples x 128 eval prompts, T=0.7)", flush=True
            )
            base = self.gold(tiny, str(tiny / "policy"))  # the SFT policy every run starts from
            for r in self.records:
                if "policy" in r:  # every RL run so far (the memory runs come later)
                    r["gold_before"] = base
                    r["gold_after"] = self.gold(tiny, r["policy"])
                    r["gold_gain"] = r["gold_after"] - base
        if "memory" in a.only:
            print(
                f"[memory] PPO at hidden {MEMORY_SIZE[0]}, {MEMORY_SIZE[1]} layers ({load_line()})",
                flush=True,
            )
            self.memory(tiny)
        if "train" in a.only:
            print(f"[train] pretrain and SFT ({load_line()})", flush=True)
            self.train(tiny)
        info["load_at_end"] = load_line()
        if engine_fingerprint() != info["engine_files"]:
            info["engine_files"] += f" at the start; CHANGED during the run to {engine_fingerprint()}"
        info["bench_minutes"] = round((time.time() - started) / 60, 1)
        summary = summarise(self.records)
        text = render(summary, info, a)
        print("\n" + text)
        (self.results / "summary.json").write_text(
            json.dumps(
                {"machine": info, "args": {"threads": a.threads, "reps": a.reps}, "summary": summary},
                indent=1,
            )
        )
        (self.results / "tables.md").write_text(text + "\n")
        # rewritten whole: the gold scores were added to the records after each run's line was appended
        lines = [json.dumps(r) for r in self.records] + [json.dumps({"machine": info})]
        self.jsonl.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=2, help="repetitions of every run (seed = rep)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run, both sides")
    parser.add_argument(
        "--only",
        default="ppo,grpo,rloo,memory,train",
        help="comma-separated parts: ppo, grpo, rloo, same-reward (our GRPO/RLOO also with the harness's "
        "reward function), memory, train",
    )
    parser.add_argument(
        "--grpo-iterations", default="4", help="GRPO/RLOO update passes per batch: '4', '1,4'"
    )
    parser.add_argument("--results", default=str(ROOT / ".peers-results"))
    parser.add_argument("--peers", default=str(ROOT / ".peers"))
    parser.add_argument(
        "--render", action="store_true", help="only print the tables again from the results' summary.json"
    )
    args = parser.parse_args()
    if args.render:
        saved = json.loads((Path(args.results) / "summary.json").read_text())
        text = render(
            saved["summary"],
            saved["machine"],
            argparse.Namespace(**saved.get("args", {"threads": "?", "reps": "?"})),
        )
        (Path(args.results) / "tables.md").write_text(text + "\n")
        print(text)
        return
    args.only = set(args.only.split(","))
    args.grpo_iterations = [int(x) for x in args.grpo_iterations.split(",")]
    Bench(args).main()


if __name__ == "__main__":
    main()
