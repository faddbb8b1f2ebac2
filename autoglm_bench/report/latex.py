"""The table as LaTeX: booktabs rules, a caption and a label, human names for keys and values
(``--labels``), each number to the precision of its standard error, the notes below the table."""

from __future__ import annotations

import re
from collections import Counter

from .cells import Report
from .views import MARK, UNTESTED, grid, headings, notes, provenance_lines

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_SYMBOLS = {"±": r"$\pm$", "²": r"$^2$", MARK: r"$^\dagger$", UNTESTED: r"$^\ddagger$"}


def latex_escape(text: str) -> str:
    r"""Escape LaTeX's special characters: ``latex_escape("tiny_glm ± 1")`` -> ``tiny\_glm $\pm$ 1``."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    for symbol, tex in _SYMBOLS.items():
        out = out.replace(symbol, tex)
    return out


def default_label(name: str | None) -> str:
    """``tab:<name>`` with characters LaTeX labels choke on replaced by ``-``."""
    return "tab:" + (re.sub(r"[^A-Za-z0-9:.-]+", "-", name).strip("-") if name else "report")


def render_latex(
    report: Report, *, ci: bool = False, labels: dict[str, str] | None = None, label: str | None = None
) -> str:
    """A ``table`` float (needs ``\\usepackage{booktabs}``): caption (the title), ``label``, a header row of
    display names, cells ``mean $\\pm$ std`` with the example-level stderr in small type; n per cell only
    where it differs from the most common n, which the notes give."""
    labels = labels or {}
    heads = headings(report, labels)
    counts = Counter(c.n for c in report.cells.values())
    usual_n = counts.most_common(1)[0][0] if counts else 0
    lines = ["% made by python -m autoglm_bench.report; needs \\usepackage{booktabs}"]
    lines += [f"% {line}" for line in provenance_lines(report)]
    lines += [r"\begin{table}[t]", r"\centering"]
    lines.append(rf"\caption{{{latex_escape(report.title or ', '.join(report.metrics))}}}")
    lines.append(rf"\label{{{label or default_label(None)}}}")
    lines += [
        r"\begin{tabular}{l" + "c" * len(heads) + "}",
        r"\toprule",
        " & ".join(latex_escape(x) for x in [_corner(report, labels), *(h for h, _, _ in heads)]) + r" \\",
        r"\midrule",
    ]
    for row, shown_row, texts in grid(report, ci, labels):
        shown = []
        for text, (_, col, _) in zip(texts, heads):
            if text is None:
                shown.append("--")
                continue
            value = latex_escape(text.value)
            cell = report.cells.get((row, col)) if col else None
            extra = text.extra
            if cell is not None and not ci:
                extra = extra.replace(f", n={cell.n}", "") if cell.n == usual_n else extra
            elif cell is not None and cell.n == usual_n:
                extra = ""
            small = rf" {{\scriptsize {latex_escape(extra)}}}" if extra else ""
            shown.append((rf"\textbf{{{value}}}" if text.bold else value) + small + latex_escape(text.mark))
        lines.append(" & ".join([latex_escape(shown_row), *shown]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip"]
    n_note = f"n = {usual_n} distinct runs per cell unless a cell says otherwise."
    lines.append(r"{\footnotesize " + r" \\ ".join(latex_escape(n) for n in [n_note, *notes(report, ci)]) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _corner(report: Report, labels: dict[str, str]) -> str:
    """The header of the row labels: the rows' display names only (a LaTeX table has no room for both)."""
    return ", ".join(labels.get(k, k) for k in report.row_keys)
