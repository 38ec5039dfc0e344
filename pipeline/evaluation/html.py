"""`eval/report.html`: the evaluation report as one self-contained page (inline CSS, plots as base64 PNGs).

No scripts, fonts or links to anything outside the file, so it opens offline and can be mailed or attached
to CI. It renders the same `Report` as report.md (`pipeline.evaluation.report.build_report`).
"""

from __future__ import annotations

import base64
from html import escape

from pipeline.evaluation.formatting import MISSING, fmt
from pipeline.evaluation.report import CHECKPOINTS_INTRO, Example, Plot, Report, Table

HTML_FILE = "report.html"

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


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in table.header)
    body = []
    for index, row in enumerate(table.rows):
        cells = [f"<th>{escape(row[0])}</th>"] + [f'<td class="num">{escape(cell)}</td>' for cell in row[1:]]
        css = ' class="best"' if index in table.highlighted else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _settings(block: dict[str, str]) -> str:
    items = "".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in block.items())
    return f'<dl class="settings">{items}</dl>'


def _warnings(report: Report) -> str:
    if not report.warnings:
        return f'<p class="ok">{escape(report.warnings_intro)}</p>'
    items = "".join(
        f"<li><b>{escape(w.kind)}</b> from step {escape(str(w.step))}: {escape(w.message)}</li>"
        for w in report.warnings
    )
    return f'<p>{escape(report.warnings_intro)}</p><ul class="warnings">{items}</ul>'


WIDE = ' class="wide"'


def _images(plots: list[Plot]) -> str:
    """The plots in a two-column grid; the first (the wide training curves) spans both columns."""
    figures = "".join(
        f'<figure{WIDE if index == 0 else ""}><img alt="{escape(plot.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(plot.png).decode()}">'
        f"<figcaption>{escape(plot.title)}</figcaption></figure>"
        for index, plot in enumerate(plots)
    )
    return f'<div class="plots">{figures}</div>'


def _examples(examples: list[Example]) -> str:
    if not examples:
        return "<p>No samples were recorded.</p>"
    intro = f"The first sample of each policy on the first {len(examples)} evaluation prompts, side by side."
    blocks = [f"<p>{intro}</p>"]
    for number, example in enumerate(examples, start=1):
        cards = []
        for cell in example.cells:
            if cell.completion is None:
                cards.append(f'<div class="sample"><h3>{escape(cell.policy)}</h3>{MISSING}</div>')
                continue
            scores = " · ".join(f"{escape(k)} {fmt(v)}" for k, v in cell.rewards.items())
            cards.append(
                f'<div class="sample"><h3>{escape(cell.policy)}</h3>'
                f'<pre>{escape(cell.completion or "(empty)")}</pre><div class="scores">{scores}</div></div>'
            )
        columns = f"grid-template-columns: repeat({len(example.cells)}, minmax(0, 1fr))"
        blocks.append(
            f'<div class="prompt"><b>Prompt {number}.</b> <code>{escape(example.prompt)}</code></div>'
            f'<div class="samples" style="{columns}">{"".join(cards)}</div>'
        )
    return "".join(blocks)


def render_html(report: Report) -> str:
    """The report as one HTML page, its plots embedded as data URIs."""
    parts = [f"<h1>{escape(report.title)}</h1>", f'<p class="verdict">{escape(report.verdict)}</p>']
    if report.warnings is not None:
        parts += ["<h2>Warnings</h2>", _warnings(report)]
    parts += ["<h2>Results</h2>", f"<p>{escape(report.results_intro)}</p>", _table(report.results)]
    if report.checkpoints is not None:
        parts += ["<h2>Checkpoints</h2>", f"<p>{escape(CHECKPOINTS_INTRO)}</p>", _table(report.checkpoints)]
        if report.best_checkpoint:
            parts.append(f"<p>{escape(report.best_checkpoint.replace('`', ''))}</p>")
    if report.plots:
        parts += ["<h2>Training curves</h2>", _images(report.plots)]
    parts += ["<h2>Sample completions</h2>", _examples(report.examples)]
    parts += ["<h2>Settings</h2>", _settings(report.settings)]
    if report.training:
        parts += ["<h2>Training</h2>", _settings(report.training)]
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{escape(report.title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>\n'
        f"<body><main>\n{body}\n</main></body></html>\n"
    )
