"""Small PNG line plots drawn with Pillow's ImageDraw.

Why not matplotlib: it is not a dependency of s3latent and the benchmarks only need a
few stacked line panels over a shared x axis (for example the resizer's alpha and the
per-window latency during a trace replay), or grouped bars per configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["Panel", "bar_plot", "line_plot"]

_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189))


@dataclass
class Panel:
    """One plot area: named series over the shared x values, with an optional fixed y range."""

    ylabel: str
    series: dict[str, Sequence[float]] = field(default_factory=dict)
    ymin: float | None = None
    ymax: float | None = None


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1/2/5 x 10^k steps)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 and float(v).is_integer():
        return str(int(v))
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def line_plot(
    path: str | Path,
    x: Sequence[float],
    panels: Sequence[Panel],
    *,
    title: str = "",
    xlabel: str = "",
    width: int = 900,
    panel_height: int = 260,
) -> Path:
    """Write stacked line panels sharing `x` to a PNG at `path`; returns the path."""
    if not panels:
        raise ValueError("need at least one panel")
    font = ImageFont.load_default()
    left, right, top, gap, bottom = 80, 150, 40 if title else 15, 30, 45
    height = top + len(panels) * panel_height + (len(panels) - 1) * gap + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((left, 12), title, fill="black", font=font)
    xs = [float(v) for v in x]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    plot_w = width - left - right

    def px(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * plot_w

    for i, panel in enumerate(panels):
        y0 = top + i * (panel_height + gap)
        y1 = y0 + panel_height
        values = [float(v) for s in panel.series.values() for v in s if math.isfinite(float(v))]
        lo = panel.ymin if panel.ymin is not None else (min(values) if values else 0.0)
        hi = panel.ymax if panel.ymax is not None else (max(values) if values else 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.0 if panel.ymin is not None and panel.ymax is not None else (hi - lo) * 0.05
        lo, hi = lo - pad, hi + pad

        def py(v: float, lo: float = lo, hi: float = hi, y1: int = y1) -> float:
            return y1 - (v - lo) / (hi - lo) * panel_height

        draw.rectangle((left, y0, left + plot_w, y1), outline="black")
        for t in _nice_ticks(lo, hi):
            yy = py(t)
            draw.line((left, yy, left + plot_w, yy), fill=(225, 225, 225))
            draw.line((left - 4, yy, left, yy), fill="black")
            draw.text((left - 8, yy), _fmt(t), fill="black", font=font, anchor="rm")
        for t in _nice_ticks(x_lo, x_hi, 8):
            xx = px(t)
            draw.line((xx, y1, xx, y1 + 4), fill="black")
            if i == len(panels) - 1:
                draw.text((xx, y1 + 6), _fmt(t), fill="black", font=font, anchor="mt")
        draw.text((8, y0 + panel_height / 2), panel.ylabel, fill="black", font=font, anchor="lm")
        for j, (name, ys) in enumerate(panel.series.items()):
            colour = _COLOURS[j % len(_COLOURS)]
            points = [
                (px(xv), py(float(yv)))
                for xv, yv in zip(xs, ys, strict=False)
                if math.isfinite(float(yv))
            ]
            if len(points) >= 2:
                draw.line(points, fill=colour, width=2)
            for p in points:
                draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
            ly = y0 + 10 + 16 * j
            draw.line((left + plot_w + 10, ly, left + plot_w + 30, ly), fill=colour, width=2)
            draw.text((left + plot_w + 34, ly), name, fill="black", font=font, anchor="lm")
    if xlabel:
        draw.text((left + plot_w / 2, height - 14), xlabel, fill="black", font=font, anchor="mm")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out


def bar_plot(
    path: str | Path,
    categories: Sequence[str],
    panels: Sequence[Panel],
    *,
    title: str = "",
    width: int = 900,
    panel_height: int = 220,
) -> Path:
    """Write stacked panels of grouped bars (one group per category) to a PNG at `path`.

    For results that are one number per configuration, where a line between
    configurations would suggest an order that is not there.
    """
    if not panels:
        raise ValueError("need at least one panel")
    font = ImageFont.load_default()
    left, right, top, gap, bottom = 80, 150, 40 if title else 15, 30, 30
    height = top + len(panels) * panel_height + (len(panels) - 1) * gap + bottom
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((left, 12), title, fill="black", font=font)
    plot_w = width - left - right
    group_w = plot_w / max(1, len(categories))
    for i, panel in enumerate(panels):
        y0 = top + i * (panel_height + gap)
        y1 = y0 + panel_height
        values = [float(v) for s in panel.series.values() for v in s if math.isfinite(float(v))]
        lo = panel.ymin if panel.ymin is not None else min([0.0, *values])
        hi = panel.ymax if panel.ymax is not None else (max(values) * 1.08 if values else 1.0)
        if hi <= lo:
            hi = lo + 1.0

        def py(v: float, lo: float = lo, hi: float = hi, y1: int = y1) -> float:
            return y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * panel_height

        draw.rectangle((left, y0, left + plot_w, y1), outline="black")
        for t in _nice_ticks(lo, hi):
            yy = py(t)
            draw.line((left, yy, left + plot_w, yy), fill=(225, 225, 225))
            draw.line((left - 4, yy, left, yy), fill="black")
            draw.text((left - 8, yy), _fmt(t), fill="black", font=font, anchor="rm")
        draw.text((8, y0 + panel_height / 2), panel.ylabel, fill="black", font=font, anchor="lm")
        n_series = max(1, len(panel.series))
        bar_w = group_w * 0.8 / n_series
        for j, (name, ys) in enumerate(panel.series.items()):
            colour = _COLOURS[j % len(_COLOURS)]
            for g, v in enumerate(ys):
                if g >= len(categories) or not math.isfinite(float(v)):
                    continue
                x0 = left + g * group_w + group_w * 0.1 + j * bar_w
                draw.rectangle((x0, py(float(v)), x0 + bar_w - 1, py(lo)), fill=colour)
                draw.text((x0 + bar_w / 2, py(float(v)) - 2), _fmt(float(v)), fill="black",
                          font=font, anchor="mb")
            ly = y0 + 10 + 16 * j
            draw.line((left + plot_w + 10, ly, left + plot_w + 30, ly), fill=colour, width=2)
            draw.text((left + plot_w + 34, ly), name, fill="black", font=font, anchor="lm")
        if i == len(panels) - 1:
            for g, label in enumerate(categories):
                draw.text((left + (g + 0.5) * group_w, y1 + 8), label, fill="black", font=font,
                          anchor="mt")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out
