"""How the report writes numbers, intervals and policy names (shared by the verdict, the tables and the
terminal)."""

from __future__ import annotations

from pipeline.evaluation.stats import Estimate

MISSING = "—"


def fmt(value: float | None) -> str:
    """Three decimals everywhere, so columns line up and no number looks more precise than another."""
    if value is None:
        return MISSING
    text = f"{float(value):.3f}"
    # Rounding -0.0004 gives "-0.000", which reads as a sign that is not there.
    return "0.000" if text == "-0.000" else text


def fmt_estimate(estimate: Estimate | None) -> str:
    if estimate is None:
        return MISSING
    return f"{fmt(estimate.mean)} [{fmt(estimate.ci_low)}, {fmt(estimate.ci_high)}]"


def ci_label(confidence: float) -> str:
    return f"{confidence * 100:g}% CI"


def interval(confidence: float, estimate: Estimate) -> str:
    return f"{ci_label(confidence)} {fmt(estimate.ci_low)} to {fmt(estimate.ci_high)}"


def display(policy: str) -> str:
    return policy.upper()


def setting_text(value: object) -> str:
    """A settings value as text; a mapping (e.g. reward sources) as `name: value` pairs."""
    if isinstance(value, dict):
        return "; ".join(f"{key}: {setting_text(item)}" for key, item in value.items()) or MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)
