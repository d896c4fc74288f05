"""What `oneseg data check` found: problems, naming file and id, and a summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

ERROR = "error"  # the dataset cannot be used as it is: non-zero exit
WARNING = "warning"  # worth a look, training works

MAX_ROWS = 200


class Problem(NamedTuple):
    severity: str  # ERROR or WARNING
    file: str  # the file at fault: image, label PNG or annotation JSON
    id: str  # what in it: "image 12", "image 12 / segment 3001", "annotation 7", ...
    message: str


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    images: Counter = field(default_factory=Counter)  # split -> images listed
    segments_per_class: Counter = field(default_factory=Counter)  # class name -> segments
    things: int = 0  # thing segments (crowd excluded)
    stuff: int = 0  # stuff segments
    crowd: int = 0  # crowd regions

    def add(self, severity: str, file, id, message: str) -> None:
        self.problems.append(Problem(severity, str(file), str(id), message))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict:
        """The whole report as plain JSON types (`oneseg data check --json`)."""
        return {
            "ok": not self.errors,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "images": dict(self.images),
            "segments": {"things": self.things, "stuff": self.stuff, "crowd": self.crowd},
            "segments_per_class": dict(self.segments_per_class),
            "problems": [p._asdict() for p in self.problems],
        }

    def merge(self, other: Report) -> None:
        self.problems += other.problems
        self.images.update(other.images)
        self.segments_per_class.update(other.segments_per_class)
        self.things += other.things
        self.stuff += other.stuff
        self.crowd += other.crowd


def print_report(report: Report, console=None) -> int:
    """Tables of the problems (errors first) and of the classes; returns the exit code."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:  # piped or redirected: one line per problem, never wrapped
        return _print_plain(report, console)
    if report.problems:
        shown = sorted(report.problems, key=lambda p: p.severity != ERROR)[:MAX_ROWS]
        table = Table(title="Problems", show_lines=False)
        for column in ("severity", "file", "id", "message"):
            table.add_column(column, overflow="fold")
        for p in shown:
            style = "bold red" if p.severity == ERROR else "yellow"
            table.add_row(f"[{style}]{p.severity}[/]", p.file, p.id, p.message)
        console.print(table)
        if len(report.problems) > MAX_ROWS:
            console.print(f"... and {len(report.problems) - MAX_ROWS} more problems")
    summary = Table(title="Segments per class")
    summary.add_column("class")
    summary.add_column("segments", justify="right")
    for name, count in sorted(report.segments_per_class.items(), key=lambda kv: -kv[1]):
        summary.add_row(name, str(count))
    console.print(summary)
    images = ", ".join(f"{split} {n}" for split, n in report.images.items()) or "none"
    console.print(
        f"images: {images}; segments: {report.things} things, {report.stuff} stuff, "
        f"{report.crowd} crowd"
    )
    errors, warnings = len(report.errors), len(report.warnings)
    verdict = "[bold red]FAILED[/]" if errors else "[bold green]OK[/]"
    console.print(f"{verdict}: {errors} errors, {warnings} warnings")
    return report.exit_code


def _print_plain(report: Report, console) -> int:
    """Tab-separated lines (severity, file, id, message) and the summary, for grep and files."""

    def out(line: str) -> None:
        console.file.write(line + "\n")

    for p in sorted(report.problems, key=lambda p: p.severity != ERROR):
        out(f"{p.severity}\t{p.file}\t{p.id}\t{p.message}")
    for name, count in sorted(report.segments_per_class.items(), key=lambda kv: -kv[1]):
        out(f"class\t{name}\t{count}")
    images = ", ".join(f"{split} {n}" for split, n in report.images.items()) or "none"
    out(
        f"images: {images}; segments: {report.things} things, {report.stuff} stuff, "
        f"{report.crowd} crowd"
    )
    verdict = "FAILED" if report.errors else "OK"
    out(f"{verdict}: {len(report.errors)} errors, {len(report.warnings)} warnings")
    return report.exit_code
