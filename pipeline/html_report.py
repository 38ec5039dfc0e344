"""`eval/report.html`: the evaluation report as one self-contained page (inline CSS, plots as base64 PNGs).

No scripts, fonts or links to anything outside the file, so it opens offline and can be mailed or attached
to CI. The content and the numbers are those of report.md (`pipeline.report` builds both).
"""

from __future__ import annotations

import base64
from html import escape

from pipeline.report import (
    MISSING,
    best_checkpoint_sentence,
    column_label,
    display,
    first_samples,
    fmt,
    sample_policies,
    setting_text,
    snapshot_rows,
    table_rows,
    verdict,
    warnings_intro,
)

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24; margin: 0;
       background: #f6f7f9; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #d8dce1; padding-bottom: 4px; }
p.verdict { font-size: 16px; background: #eef4ff; border-left: 4px solid #3b6fd8; padding: 10px 14px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13.5px; }
th, td { border: 1px solid #d8dce1; padding: 4px 9px; vertical-align: top; }
th { background: #f0f2f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #fff7d6; }
ul.warnings { list-style: none; padding: 0; }
ul.warnings li { background: #fff1f0; border-left: 4px solid #d4380d; padding: 8px 12px; margin: 6px 0; }
ul.warnings b { color: #a8071a; }
p.ok { background: #f0fff4; border-left: 4px solid #389e0d; padding: 8px 12px; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
figure { margin: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; border: 1px solid #d8dce1; }
figcaption { font-size: 13px; color: #555; }
.prompt { margin: 18px 0 6px; }
.samples { display: grid; gap: 8px; }
.sample { border: 1px solid #d8dce1; border-radius: 4px; padding: 8px 10px; background: #fafbfc; }
.sample h3 { font-size: 13px; margin: 0 0 6px; color: #3b4350; }
.sample pre { white-space: pre-wrap; word-break: break-word; margin: 0 0 6px; font-size: 13px; }
.sample .scores { font-size: 12px; color: #444; font-variant-numeric: tabular-nums; }
dl.settings { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 13.5px; }
dl.settings dt { color: #555; }
dl.settings dd { margin: 0; }
"""


def _table(header: list[str], rows: list[list[str]], highlight: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        cells = [f"<th>{escape(row[0])}</th>"] + [f'<td class="num">{escape(cell)}</td>' for cell in row[1:]]
        css = ' class="best"' if index in highlight else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _settings(block: dict) -> str:
    items = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(setting_text(v))}</dd>" for k, v in block.items())
    return f'<dl class="settings">{items}</dl>'


def _warnings(metrics: dict) -> str:
    if not metrics.get("warnings"):
        return f'<p class="ok">{escape(warnings_intro(metrics))}</p>'
    items = "".join(
        f"<li><b>{escape(w['kind'])}</b> from step {escape(str(w['step']))}: {escape(w['message'])}</li>"
        for w in metrics["warnings"]
    )
    return f'<p>{escape(warnings_intro(metrics))}</p><ul class="warnings">{items}</ul>'


WIDE = ' class="wide"'


def _images(images: list[tuple[str, bytes]]) -> str:
    """The plots in a two-column grid; the first (the wide training curves) spans both columns."""
    figures = "".join(
        f'<figure{WIDE if index == 0 else ""}><img alt="{escape(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{escape(title)}</figcaption>'
        "</figure>"
        for index, (title, png) in enumerate(images)
    )
    return f'<div class="plots">{figures}</div>'


def _examples(metrics: dict, samples: list[dict], n_examples: int) -> str:
    chosen = first_samples(samples, n_examples)
    if not chosen:
        return "<p>No samples were recorded.</p>"
    named = {row["policy"] for row in samples}
    shown = [policy for policy in sample_policies(metrics, samples) if policy in named]
    blocks = [
        f"<p>The first sample of each policy on the first {len(chosen)} evaluation prompts, side by side.</p>"
    ]
    for number, (prompt, rows) in enumerate(chosen, start=1):
        cards = []
        for policy in shown:
            row = rows.get(policy)
            if row is None:
                cards.append(
                    f'<div class="sample"><h3>{escape(column_label(metrics, policy))}</h3>{MISSING}</div>'
                )
                continue
            scores = " · ".join(f"{escape(k)} {fmt(v)}" for k, v in row.get("rewards", {}).items())
            text = row.get("completion", "") or "(empty)"
            cards.append(
                f'<div class="sample"><h3>{escape(column_label(metrics, policy))}</h3>'
                f'<pre>{escape(text)}</pre><div class="scores">{scores}</div></div>'
            )
        columns = f"grid-template-columns: repeat({len(shown)}, minmax(0, 1fr))"
        blocks.append(
            f'<div class="prompt"><b>Prompt {number}.</b> <code>{escape(prompt)}</code></div>'
            f'<div class="samples" style="{columns}">{"".join(cards)}</div>'
        )
    return "".join(blocks)


def render_html(
    metrics: dict, samples: list[dict], images: list[tuple[str, bytes]], n_examples: int = 6
) -> str:
    """The report as one HTML page; `images` are (title, PNG bytes) pairs embedded as data URIs."""
    title = f"Evaluation: {display(metrics['candidate'])} vs {display(metrics['baseline'])}"
    header, rows = table_rows(metrics)
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="verdict">{escape(verdict(metrics))}</p>']
    if "warnings" in metrics:
        parts += ["<h2>Warnings</h2>", _warnings(metrics)]
    parts += ["<h2>Results</h2>", _results_intro(metrics), _table(header, rows)]
    if metrics.get("snapshots"):
        snap_header, snap_rows = snapshot_rows(metrics)
        best = {i for i, row in enumerate(snap_rows) if row[-1].endswith("← best")}
        parts += ["<h2>Checkpoints</h2>", _table(snap_header, snap_rows, best)]
        sentence = best_checkpoint_sentence(metrics)
        parts += [f"<p>{escape(sentence.replace('`', ''))}</p>"] if sentence else []
    if images:
        parts += ["<h2>Training curves</h2>", _images(images)]
    parts += ["<h2>Sample completions</h2>", _examples(metrics, samples, n_examples)]
    parts += ["<h2>Settings</h2>", _settings(metrics.get("settings", {}))]
    if metrics.get("training"):
        parts += ["<h2>Training</h2>", _settings(metrics["training"])]
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>\n'
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def _results_intro(metrics: dict) -> str:
    confidence = float(metrics.get("settings", {}).get("confidence", 0.95))
    baseline, candidate = display(metrics["baseline"]), display(metrics["candidate"])
    return (
        f"<p>Mean [{confidence * 100:g}% CI] of each metric over the evaluation samples, resampled by "
        f"prompt. The difference is {escape(candidate)} minus {escape(baseline)} on the same prompts (paired "
        f"bootstrap); a win rate is how often a policy's sample scores above {escape(baseline)}'s on the "
        "same prompt (ties count half); distinct-n is unique n-grams / n-grams over a policy's samples; "
        "perplexity is exp(mean NLL per token) of the samples under the reference.</p>"
    )
