"""Statistics over the per-model summaries: best marks, gains, paired t-test.

Higher is better for every metric; the t-test is ``scipy.stats.ttest_rel``,
one-sided (H1: the first model's mean is greater), paired by seed.
"""

import datetime
import statistics

from benchmarks.protocol import is_diffusion

__all__ = [
    "best_of",
    "improvement",
    "mark_best",
    "most_at_once",
    "paired_ttest",
    "relative_gain",
]


def mark_best(means):
    """{model: 'best' | 'second' | None} by mean, higher is better; ties share."""
    present = sorted({v for v in means.values() if v is not None}, reverse=True)
    marks = {}
    for model, value in means.items():
        if value is None or not present:
            marks[model] = None
        elif value == present[0]:
            marks[model] = "best"
        elif len(present) > 1 and value == present[1]:
            marks[model] = "second"
        else:
            marks[model] = None
    return marks


def best_of(summary, metric, diffusion):
    """The model with the highest mean ``metric`` in one group, or None."""
    group = {
        m: s["mean"][metric]
        for m, s in summary.items()
        if is_diffusion(m) == diffusion and s["mean"][metric] is not None
    }
    return max(group, key=group.get) if group else None


def improvement(summary, metric):
    """(best diffusion, best baseline, relative gain) on ``metric``, or None."""
    diffusion = best_of(summary, metric, True)
    baseline = best_of(summary, metric, False)
    if diffusion is None or baseline is None:
        return None
    gain = relative_gain(
        summary[diffusion]["mean"][metric], summary[baseline]["mean"][metric]
    )
    return diffusion, baseline, gain


def relative_gain(value, reference):
    """(value - reference) / reference, or None for a zero reference."""
    return (value - reference) / reference if reference else None


def paired_ttest(model_values, baseline_values):
    """One-sided paired t-test, H1: model > baseline, over the shared seeds.

    Args:
        model_values, baseline_values: {seed: value}.

    Returns:
        dict: n, mean_diff, t, p (t and p None when n < 2 or the differences
        have no variance), and ``note`` saying why.
    """
    from scipy.stats import ttest_rel

    seeds = sorted(
        s
        for s in set(model_values) & set(baseline_values)
        if model_values[s] is not None and baseline_values[s] is not None
    )
    a = [model_values[s] for s in seeds]
    b = [baseline_values[s] for s in seeds]
    out = {"n": len(seeds), "mean_diff": None, "t": None, "p": None, "note": None}
    if not seeds:
        out["note"] = "no shared seeds"
        return out
    diffs = [x - y for x, y in zip(a, b)]
    out["mean_diff"] = statistics.fmean(diffs)
    if len(seeds) < 2:
        out["note"] = "n < 2"
        return out
    # metrics carry 4 decimals, so equal differences are equal only up to rounding
    if statistics.pstdev(diffs) < 1e-9:
        out["note"] = "differences have no variance"
        return out
    result = ttest_rel(a, b, alternative="greater")
    out["t"] = float(result.statistic)
    out["p"] = float(result.pvalue)
    return out


def most_at_once(units):
    """The largest number of units whose [started_at, finished_at] overlapped."""
    events = []
    for unit in units:
        if unit.get("started_at") and unit.get("finished_at"):
            start = datetime.datetime.fromisoformat(unit["started_at"])
            end = datetime.datetime.fromisoformat(unit["finished_at"])
            events += [(start, 1), (end, -1)]
    running = most = 0
    # an end sorts before a start at the same instant: back-to-back is not overlap
    for _, change in sorted(events):
        running += change
        most = max(most, running)
    return most
