"""What a study leaves for a person in `results_dir/automl/`, rewritten after every trial:

- `best_spec.yaml`: the spec with the best complete trial's values, ready for `oneseg train -e`;
- `trials.md` and `trials.csv`: trial, state, metric, each searched value, seconds, note;
- `trials.png`: the metric of every trial and the best so far; `importance.png`: how much each
  parameter mattered (Optuna's PED-ANOVA importance; drawn once two trials are complete).

Trial states are Optuna's, except that a failed trial whose process was killed (or stopped by
Ctrl-C) reads INTERRUPTED: it is run again under a new number and does not count as finished.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from oneseg.automl.space import searched_tree
from oneseg.io import write_atomic
from oneseg.spec import dump_spec, spec_from_dict, spec_to_dict

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials this one runs again, oldest first ([] for a first run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a later trial runs again."""
    return {n for t in trials for n in retry_history(t)}


def outcome(trial: FrozenTrial, retried: set[int]) -> str:
    if trial.state == TrialState.FAIL and (
        trial.user_attrs.get("interrupted") or trial.number in retried
    ):
        return "INTERRUPTED"
    return trial.state.name


def count_finished(trials: list[FrozenTrial], running: bool = False) -> int:
    """Trials that count towards automl.max_trials (and, with `running`, those under way)."""
    retried = retried_numbers(trials)
    states = FINISHED + (("RUNNING",) if running else ())
    return sum(outcome(t, retried) in states for t in trials)


def metric_value(trial: FrozenTrial) -> float | None:
    """The final value of a complete trial, the last report of a pruned one."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def trial_rows(trials: list[FrozenTrial], keys: list[str], metric: str) -> list[dict]:
    retried = retried_numbers(trials)
    rerun_as = {}
    for t in trials:
        history = retry_history(t)
        if history:
            rerun_as[history[-1]] = t.number
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        state = outcome(t, retried)
        note = {
            "FAIL": t.user_attrs.get("error", ""),
            "PRUNED": f"pruned after {t.last_step} report(s)",
            "INTERRUPTED": f"run again as trial {rerun_as.get(t.number, '?')}",
        }.get(state, "")
        history = retry_history(t)
        if history:
            note = f"re-run of trial {history[-1]}" + (f"; {note}" if note else "")
        rows.append(
            {
                "trial": t.number,
                "state": state,
                metric: metric_value(t),
                **{key: t.params.get(key) for key in keys},
                "seconds": t.user_attrs.get("seconds"),
                "note": note,
            }
        )
    return rows


def write_reports(study: optuna.Study, spec, space, folder: Path) -> dict:
    """Write every file of the module docstring; returns the study's KPIs."""
    metric = spec.automl.metric
    trials = study.get_trials(deepcopy=False)
    keys = [p.key for p in space]
    rows = trial_rows(trials, keys, metric)
    _write_text(folder / "trials.csv", _csv(rows))
    _write_text(folder / "trials.md", _markdown(rows))
    counts = {s: sum(r["state"] == s for r in rows) for s in FINISHED + ("INTERRUPTED",)}
    kpi = {
        "trials_finished": counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"],
        "trials_complete": counts["COMPLETE"],
        "trials_pruned": counts["PRUNED"],
        "trials_failed": counts["FAIL"],
        "trials_interrupted": counts["INTERRUPTED"],
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        kpi.update(best_trial=best.number, best_value=best.value, best_params=best.params)
        _write_best_spec(folder / "best_spec.yaml", spec, space, best, len(rows))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    if rows:
        plot_history(folder / "trials.png", rows, metric, maximize)
    if len(complete) >= 2:
        plot_importance(folder / "importance.png", study)
    return kpi


def _write_best_spec(path: Path, spec, space, best: FrozenTrial, total: int) -> None:
    metric = spec.automl.metric
    values = {p.key: best.params[p.key] for p in space if p.key in best.params}
    best_spec = spec_from_dict(searched_tree(spec_to_dict(spec), space, values, metric))
    header = (
        f"# best of {total} trials of study '{spec.automl.study_name}': "
        f"{spec.automl.metric} {best.value:.4g} (trial {best.number})\n"
        f"# train with it: oneseg train -e {path.name}\n"
    )
    _write_text(path, header + dump_spec(best_spec))


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _shown(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "/")


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return "no trial yet\n"
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_shown(row[n]) for n in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_history(path: Path, rows: list[dict], metric: str, maximize: bool) -> None:
    """The metric of each complete (dot) and pruned (cross, last report) trial, and the best
    complete value so far as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, ax = plt.subplots(figsize=(7, 4))
    for state, marker, color in (("COMPLETE", "o", "tab:blue"), ("PRUNED", "x", "tab:gray")):
        shown = [r for r in rows if r["state"] == state and _finite(r[metric])]
        ax.scatter(
            [r["trial"] for r in shown],
            [r[metric] for r in shown],
            marker=marker,
            color=color,
            label=state.lower(),
        )
    best, steps = None, []
    for row in rows:
        value = row[metric]
        if row["state"] == "COMPLETE" and _finite(value):
            better = best is None or (value > best if maximize else value < best)
            best = value if better else best
        if best is not None:
            steps.append((row["trial"], best))
    if steps:
        ax.step(*zip(*steps), where="post", color="tab:orange", label="best so far")
    for row in rows:
        if row["state"] == "FAIL":
            ax.axvline(row["trial"], color="tab:red", alpha=0.3, lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (red lines: failed)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial; the line: best so far", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)


def plot_importance(path: Path, study: optuna.Study) -> None:
    """Horizontal bars of Optuna's parameter importances (needs varied complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return  # too few or too alike trials to tell
    if not importances:
        return
    names = list(importances)
    figure, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(names)))
    ax.barh(range(len(names)), [importances[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)


def append_status_line(path: Path, status: str, message: str) -> None:
    """One more status.json line, as `oneseg.experiment.ActionRun` writes them."""
    line = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "action": "train",
        "status": status,
        "message": message,
    }
    if path.parent.is_dir():
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _save_figure(figure, path: Path) -> None:
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
