"""`eval/report.md`: the `Report` as GitHub-flavoured markdown, its plots linked as PNGs beside it."""

from __future__ import annotations

from pipeline.evaluation.formatting import MISSING, fmt
from pipeline.evaluation.report import CHECKPOINTS_INTRO, Example, Report, Table

REPORT_FILE = "report.md"
MAX_SHOWN_CHARS = 300


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(_escape_cell(cell) for cell in table.header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|")
    lines += ["| " + " | ".join(_escape_cell(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _shown(text: str) -> str:
    """Text as a single line that fits in a table cell: newlines made visible, long text cut."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "…"


def code_span(text: str, in_table: bool) -> str:
    """Markdown code span that survives backticks in the text (and `|` inside a table)."""
    text = _shown(text)
    if not text:
        return "*(empty)*"
    longest_run, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest_run = max(longest_run, run)
    fence = "`" * (longest_run + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    span = f"{fence}{padded}{fence}"
    # GitHub-flavoured markdown splits table cells on `|` even inside code spans, unless escaped.
    return _escape_cell(span) if in_table else span


def _example_block(number: int, example: Example) -> str:
    # A policy with no sample for this prompt shows a dash, not an "(empty)" completion.
    completions = [
        code_span(cell.completion, in_table=True) if cell.completion is not None else MISSING
        for cell in example.cells
    ]
    lines = [
        f"**Prompt {number}.** {code_span(example.prompt, in_table=False)}",
        "",
        "| | " + " | ".join(cell.policy for cell in example.cells) + " |",
        "|---|" + "---|" * len(example.cells),
        "| completion | " + " | ".join(completions) + " |",
    ]
    for source in example.sources:
        values = " | ".join(fmt(cell.rewards.get(source)) for cell in example.cells)
        lines.append(f"| {_escape_cell(source)} | {values} |")
    return "\n".join(lines)


def _examples_section(examples: list[Example]) -> str:
    if not examples:
        return "No samples were recorded."
    intro = f"The first sample of each policy on the first {len(examples)} evaluation prompts."
    blocks = [_example_block(number, example) for number, example in enumerate(examples, start=1)]
    return "\n\n".join([intro, *blocks])


def _key_values(block: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in block.items())


def render_markdown(report: Report) -> str:
    """The whole report as markdown; each plot is linked by its file name (written beside the report)."""
    sections = [f"# {report.title}", report.verdict]
    if report.warnings is not None:
        lines = [f"- **{w.kind}** from step {w.step}: {w.message}" for w in report.warnings]
        sections += ["## Warnings", "\n".join([report.warnings_intro, *lines])]
    sections += ["## Results", report.results_intro, markdown_table(report.results)]
    if report.checkpoints is not None:
        sections += ["## Checkpoints", CHECKPOINTS_INTRO, markdown_table(report.checkpoints)]
        sections += [report.best_checkpoint] if report.best_checkpoint else []
    sections += ["## Settings", _key_values(report.settings) or "No settings recorded."]
    if report.training:
        sections += ["## Training", _key_values(report.training)]
    if report.plots:
        sections += [
            "## Training curves",
            "\n\n".join(f"![{plot.title}]({plot.file})" for plot in report.plots),
        ]
    sections += ["## Sample completions", _examples_section(report.examples)]
    return "\n\n".join(sections) + "\n"
