"""What the numbers mean, in sentences: the verdict (did the candidate really improve on the gold scorer,
and did a proxy rise without it), the warnings' introduction and the best checkpoint."""

from __future__ import annotations

from pipeline.evaluation.formatting import display, fmt, interval
from pipeline.evaluation.result import GOLD, EvaluationResult
from pipeline.evaluation.stats import Estimate

HEALTH_CHECKS = (
    "KL, entropy, response collapse, empty responses, flat rewards, value loss, sampler-trainer mismatch; "
    "proxy vs gold across snapshots"
)


def _difference_sentence(result: EvaluationResult, source: str, difference: Estimate) -> str:
    baseline, candidate = display(result.baseline), display(result.candidate)
    direction = "higher" if difference.mean >= 0 else "lower"
    if difference.ci_low > 0:
        conclusion = "a real improvement."
    elif difference.ci_high < 0:
        conclusion = "a real decline."
    else:
        conclusion = "not distinguishable from zero, so this evaluation shows no reliable change."
    return (
        f"The {candidate} policy's mean {source} score is {fmt(abs(difference.mean))} {direction} "
        f"than the {baseline} policy's ({interval(result.confidence, difference)}): {conclusion}"
    )


def _proxy_warning(result: EvaluationResult) -> str | None:
    """Proxy rewards that rose for sure while gold did not: the signature of reward hacking."""
    differences = result.differences
    if differences[GOLD].ci_low > 0:
        return None
    risen = {source: e for source, e in differences.items() if source != GOLD and e.ci_low > 0}
    if not risen:
        return None
    evidence = " and ".join(
        f"the {source} score rose by {fmt(estimate.mean)} ({interval(result.confidence, estimate)})"
        for source, estimate in risen.items()
    )
    return (
        f"Yet {evidence} while the gold score did not: "
        "the policy may be fooling the reward model rather than getting better."
    )


def verdict(result: EvaluationResult) -> str:
    differences = result.differences
    if not differences:
        return "No reward difference between the two policies was computed, so there is no verdict."
    if GOLD not in differences:
        # Without a gold scorer the only judge is a proxy, which RL optimised against.
        source = next(iter(differences))
        return (
            _difference_sentence(result, source, differences[source])
            + " There is no gold scorer for this task, so this is the proxy's own judgement:"
            " a rise can also mean the policy learned to exploit it."
        )
    sentences = [_difference_sentence(result, GOLD, differences[GOLD])]
    warning = _proxy_warning(result)
    if warning:
        sentences.append(warning)
    peaked = [w for w in result.warnings or [] if w.kind == "overoptimization"]
    if peaked:
        sentences.append(
            f"But during training the gold score peaked at step {peaked[0].step} and then fell while the "
            "proxy kept rising: over-optimisation (see Warnings and Checkpoints)."
        )
    return " ".join(sentences)


def warnings_intro(result: EvaluationResult) -> str:
    steps = result.training.get("steps")
    checked = f" over {int(steps)} RL steps" if isinstance(steps, (int, float)) else ""
    if not result.warnings:
        return f"No training-health or over-optimisation warnings{checked} ({HEALTH_CHECKS})."
    return f"{len(result.warnings)} warning(s){checked}, each from the step at which it began:"


def best_checkpoint_sentence(result: EvaluationResult) -> str | None:
    best = result.best_checkpoint
    if best is None:
        return None
    judge, path = best.judged_by, best.snapshot.path
    if path and best.stage:
        where = f"its weights are in `{best.stage}/{path}` of the run directory"
    else:
        where = f"its weights are in `{path}`" if path else "no weights were saved for it"
    evaluated = ""
    if best.evaluated_as:
        evaluated = (
            f" It is evaluated above as {display(best.evaluated_as)}, on the same prompts as the others"
        )
        change = (best.difference_vs_candidate or {}).get(judge)
        if change:
            direction = "higher" if change.mean >= 0 else "lower"
            evaluated += (
                f": its mean {judge} score is {fmt(abs(change.mean))} {direction} than the final "
                f"{display(result.candidate)} policy's ({interval(result.confidence, change)})"
            )
        evaluated += "."
    return (
        f"Best checkpoint by {judge}: step {best.snapshot.step} ({judge} {fmt(best.score)}, "
        f"KL {fmt(best.snapshot.kl)}); {where}.{evaluated}"
    )
