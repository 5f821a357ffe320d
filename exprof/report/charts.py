"""Chart geometry, computed at build time; the templates draw it as inline SVG.

Every chart is bounded in elements whatever the run's size: histograms have a fixed
number of bins, and the A-vs-B scatter draws one circle per occupied grid cell (sized
by its count), not one per sample.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

WIDTH, HEIGHT = 460, 170
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 44, 26, 10
BINS = 24
NAME_CHARS = 40  # the longest name a CI chart prints whole


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _bars(
    counts: Sequence[int],
    labels: Sequence[str],
    ticks: list[dict[str, Any]],
    max_step: float = WIDTH,
    classes: Sequence[str] = (),
) -> dict:
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    top = max(counts) if counts else 0
    step = min(plot_w / max(len(counts), 1), max_step)
    offset = (plot_w - step * len(counts)) / 2  # a few wide-apart bars sit centred
    bars = []
    for i, (count, label) in enumerate(zip(counts, labels, strict=True)):
        h = plot_h * count / top if top else 0
        bars.append(
            {
                "cls": classes[i] if classes else "bar",
                "x": round(PAD_LEFT + offset + i * step + 1, 1),
                "y": round(PAD_TOP + plot_h - h, 1),
                "w": round(max(step - 2, 1), 1),
                "h": round(h, 1),
                "title": f"{label}: {count}",
            }
        )
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "ticks": ticks,
        "y_max": f"{top:,}",
        "base": PAD_TOP + plot_h,
        "left": PAD_LEFT,
        "top": PAD_TOP,
        "right": WIDTH - 8,
    }


def histogram(values: Sequence[float], unit: str = "") -> dict | None:
    """Equal-width bins over the values' range; None when there is nothing to draw."""
    if not values:
        return None
    data = np.asarray(values, dtype=float)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        hi = lo + 1
    counts, edges = np.histogram(data, bins=BINS, range=(lo, hi))
    labels = [f"{_fmt(edges[i])}–{_fmt(edges[i + 1])}{unit}" for i in range(BINS)]
    plot_w = WIDTH - PAD_LEFT - 8
    ticks = [
        {"x": round(PAD_LEFT + plot_w * k / 4, 1), "label": _fmt(lo + (hi - lo) * k / 4) + unit}
        for k in range(5)
    ]
    return _bars([int(c) for c in counts], labels, ticks)


def distribution(values: Sequence[float]) -> dict | None:
    """One bar per distinct coverage value when there are few (3 facts give 4), else
    ten bins over [0, 1]."""
    if not values:
        return None
    distinct = Counter(round(v, 4) for v in values)
    if len(distinct) > 12:
        counts, edges = np.histogram(np.asarray(values, dtype=float), bins=10, range=(0.0, 1.0))
        keys = [f"{edges[i]:.1f}–{edges[i + 1]:.1f}" for i in range(10)]
        result = _bars([int(c) for c in counts], keys, [])
    else:
        order = sorted(distinct)
        keys = [_fmt(k) if k in (0, 1) else f"{k:.2f}" for k in order]
        result = _bars([distinct[k] for k in order], keys, [], max_step=64)
    result["ticks"] = [
        {"x": round(b["x"] + b["w"] / 2, 1), "label": key}
        for b, key in zip(result["bars"], keys, strict=True)
    ]
    return result


def categories(counts: Sequence[tuple[str, int]], classes: Sequence[str] = ()) -> dict:
    """One labelled bar per category (answered / refused)."""
    names = [name for name, _ in counts]
    result = _bars([n for _, n in counts], names, [], max_step=150, classes=classes)
    total = sum(n for _, n in counts) or 1
    result["ticks"] = [
        {"x": round(b["x"] + b["w"] / 2, 1), "label": f"{name} {n:,} ({n / total:.0%})"}
        for b, (name, n) in zip(result["bars"], counts, strict=True)
    ]
    return result


def ci_bars(metrics: dict[str, dict[str, Any]]) -> dict | None:
    """Each metric's B−A delta as a dot inside its 95% CI bar, on an axis centred at 0."""
    rows = [(name, m) for name, m in metrics.items() if m.get("ci95")]
    if not rows:
        return None
    reach = max(max(abs(m["ci95"][0]), abs(m["ci95"][1]), abs(m["delta"])) for _, m in rows)
    reach = reach * 1.15 or 0.01
    # Room for the longest name on the left (an experiment's cell names run long), up to
    # NAME_CHARS; a longer one is cut there, whole in its tooltip.
    longest = min(max(len(name) for name, _ in rows), NAME_CHARS)
    left = max(150, round(16 + 6.6 * longest))
    right, row_h = left + WIDTH - 30, 34
    mid = (left + right) / 2

    def x(v: float) -> float:
        return round(mid + (right - left) / 2 * v / reach, 1)

    out = []
    for i, (name, m) in enumerate(rows):
        lo, hi = m["ci95"]
        out.append(
            {
                "name": name,
                "short": name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…",
                "y": 20 + i * row_h,
                "x_lo": x(lo),
                "x_hi": x(hi),
                "x_delta": x(m["delta"]),
                "verdict": m.get("verdict") or "",
                "kind": _verdict_kind(m.get("verdict") or ""),
                "label": f"{m['delta']:+.4f}  [{lo:+.4f}, {hi:+.4f}]",
            }
        )
    height = 20 + len(rows) * row_h + 22
    ticks = [
        {"x": x(v), "label": f"{v:+.2g}" if v else "0"} for v in (-reach / 1.15, 0, reach / 1.15)
    ]
    return {
        "width": right + 20,
        "height": height,
        "rows": out,
        "mid": mid,
        "left": left,
        "right": right,
        "ticks": ticks,
        "axis_y": height - 20,
    }


def _verdict_kind(verdict: str) -> str:
    if verdict.startswith("improved"):
        return "good"
    if verdict.startswith("regressed"):
        return "bad"
    return "neutral"


def scatter(pairs: Sequence[tuple[float, float]], grid: int = 20) -> dict | None:
    """Per-sample coverage, A on x and B on y, snapped to a grid: one circle per cell
    with its area proportional to the samples in it."""
    if not pairs:
        return None
    size, pad = 300, 36
    cells = Counter((round(a * grid), round(b * grid)) for a, b in pairs)
    top = max(cells.values())
    span = size - 2 * pad
    points = []
    for (i, j), count in sorted(cells.items()):
        points.append(
            {
                "cx": round(pad + span * i / grid, 1),
                "cy": round(size - pad - span * j / grid, 1),
                "r": round(2.5 + 13 * math.sqrt(count / top), 1),
                "kind": "good" if j > i else "bad" if j < i else "neutral",
                "title": f"A {i / grid:.2f}, B {j / grid:.2f}: {count} samples",
            }
        )
    return {"size": size, "pad": pad, "far": size - pad, "points": points}


def frontier_scatter(cells: Sequence[dict[str, Any]], metric: str) -> dict | None:
    """Cells by cost per sample (x) and quality (y), each with both 95% intervals as
    error bars, the frontier's cells joined by a line in order of cost. One mark per
    cell: an experiment has at most a few dozen."""
    shown = [c for c in cells if c.get("on_frontier") is not None]
    if not shown:
        return None
    width, height, left, bottom, top, right = 460, 260, 64, 34, 12, 16

    def span(key: str, ci: str) -> tuple[float, float]:
        values = [v for c in shown for v in [c[key], *(c.get(ci) or [])] if v is not None]
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-9)
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = (
        span("cost_per_sample", "cost_per_sample_ci95"),
        span("quality", "quality_ci95"),
    )

    def x(v: float) -> float:
        return round(left + (width - left - right) * (v - x0) / (x1 - x0), 1)

    def y(v: float) -> float:
        return round(height - bottom - (height - bottom - top) * (v - y0) / (y1 - y0), 1)

    points = []
    for c in shown:
        cost_ci = c.get("cost_per_sample_ci95") or [c["cost_per_sample"]] * 2
        quality_ci = c.get("quality_ci95") or [c["quality"]] * 2
        points.append(
            {
                "cx": x(c["cost_per_sample"]),
                "cy": y(c["quality"]),
                "x_lo": x(cost_ci[0]),
                "x_hi": x(cost_ci[1]),
                "y_lo": y(quality_ci[0]),
                "y_hi": y(quality_ci[1]),
                "on": bool(c["on_frontier"]),
                "title": f"{c['cell']}: {metric} {c['quality']} {quality_ci}, "
                f"${c['cost_per_sample']:.4g} per sample [${cost_ci[0]:.4g}, ${cost_ci[1]:.4g}]"
                + (" (on the frontier)" if c["on_frontier"] else ""),
            }
        )
    line = sorted((p["cx"], p["cy"]) for p in points if p["on"])
    return {
        "width": width,
        "height": height,
        "left": left,
        "base": height - bottom,
        "top": top,
        "right": width - right,
        "points": points,
        "line": " ".join(f"{a},{b}" for a, b in line),
        "x_ticks": [{"x": x(v), "label": f"${v:.3g}"} for v in (x0, (x0 + x1) / 2, x1)],
        "y_ticks": [{"y": y(v), "label": f"{v:.3g}"} for v in (y0, (y0 + y1) / 2, y1)],
        "metric": metric,
    }


HEAT_STEPS = 8  # classes heat-0 (worst in its column) .. heat-8 (best), in report.css


def heat_classes(values: Sequence[float | None], higher_is_better: bool) -> list[str]:
    """Each value's colour class, scaled within its own column: the column's worst value
    gets heat-0 and its best heat-HEAT_STEPS. Classes rather than inline styles, because
    the page's Content-Security-Policy admits only our one stylesheet. A column whose
    values are all equal is "heat-same"; a missing value "heat-none"."""
    present = [v for v in values if v is not None]
    lo, hi = (min(present), max(present)) if present else (0.0, 0.0)
    out = []
    for v in values:
        if v is None:
            out.append("heat-none")
        elif hi == lo:
            out.append("heat-same")
        else:
            share = (v - lo) / (hi - lo)
            share = share if higher_is_better else 1 - share
            out.append(f"heat-{round(share * HEAT_STEPS)}")
    return out
