"""Small PNG line plots drawn with Pillow's ImageDraw.

Why not matplotlib: it is not a dependency of s3latent and the benchmarks only need a
few stacked line panels over a shared x axis (for example the resizer's alpha and the
per-window latency during a trace replay), or grouped bars per configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


class _Canvas:
    """The frame both plot kinds share: title, stacked panel boxes, y ticks, legend, save."""

    left, right, gap = 80, 150, 30

    def __init__(self, panels: int, *, title: str, width: int, panel_height: int,
                 bottom: int) -> None:
        if panels < 1:
            raise ValueError("need at least one panel")
        self.font = ImageFont.load_default()
        self.top = 40 if title else 15
        self.panel_height = panel_height
        self.height = self.top + panels * panel_height + (panels - 1) * self.gap + bottom
        self.img = Image.new("RGB", (width, self.height), "white")
        self.draw = ImageDraw.Draw(self.img)
        self.plot_w = width - self.left - self.right
        if title:
            self.text((self.left, 12), title)

    def text(self, xy: tuple[float, float], text: str, anchor: str | None = None) -> None:
        self.draw.text(xy, text, fill="black", font=self.font, anchor=anchor)

    def panel(self, i: int, ylabel: str, ticks: list[float],
              py: Callable[[float], float]) -> tuple[int, int]:
        """Draw panel `i`'s box, y grid and label; returns its top and bottom y."""
        y0 = self.top + i * (self.panel_height + self.gap)
        y1 = y0 + self.panel_height
        left, right_edge = self.left, self.left + self.plot_w
        self.draw.rectangle((left, y0, right_edge, y1), outline="black")
        for t in ticks:
            yy = py(t)
            self.draw.line((left, yy, right_edge, yy), fill=(225, 225, 225))
            self.draw.line((left - 4, yy, left, yy), fill="black")
            self.text((left - 8, yy), _fmt(t), anchor="rm")
        self.text((8, y0 + self.panel_height / 2), ylabel, anchor="lm")
        return y0, y1

    def legend(self, y0: int, j: int, name: str, colour: tuple[int, int, int]) -> None:
        ly = y0 + 10 + 16 * j
        x = self.left + self.plot_w
        self.draw.line((x + 10, ly, x + 30, ly), fill=colour, width=2)
        self.text((x + 34, ly), name, anchor="lm")

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.img.save(out, format="PNG")
        return out


def _finite(panel: Panel) -> list[float]:
    return [float(v) for s in panel.series.values() for v in s if math.isfinite(float(v))]


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
    canvas = _Canvas(len(panels), title=title, width=width, panel_height=panel_height,
                     bottom=45)
    xs = [float(v) for v in x]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0

    def px(v: float) -> float:
        return canvas.left + (v - x_lo) / (x_hi - x_lo) * canvas.plot_w

    for i, panel in enumerate(panels):
        values = _finite(panel)
        lo = panel.ymin if panel.ymin is not None else (min(values) if values else 0.0)
        hi = panel.ymax if panel.ymax is not None else (max(values) if values else 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.0 if panel.ymin is not None and panel.ymax is not None else (hi - lo) * 0.05
        lo, hi = lo - pad, hi + pad
        y1_of = canvas.top + i * (panel_height + canvas.gap) + panel_height

        def py(v: float, lo: float = lo, hi: float = hi, y1: int = y1_of) -> float:
            return y1 - (v - lo) / (hi - lo) * panel_height

        y0, y1 = canvas.panel(i, panel.ylabel, _nice_ticks(lo, hi), py)
        for t in _nice_ticks(x_lo, x_hi, 8):
            xx = px(t)
            canvas.draw.line((xx, y1, xx, y1 + 4), fill="black")
            if i == len(panels) - 1:
                canvas.text((xx, y1 + 6), _fmt(t), anchor="mt")
        for j, (name, ys) in enumerate(panel.series.items()):
            colour = _COLOURS[j % len(_COLOURS)]
            points = [
                (px(xv), py(float(yv)))
                for xv, yv in zip(xs, ys, strict=False)
                if math.isfinite(float(yv))
            ]
            if len(points) >= 2:
                canvas.draw.line(points, fill=colour, width=2)
            for p in points:
                canvas.draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
            canvas.legend(y0, j, name, colour)
    if xlabel:
        canvas.text((canvas.left + canvas.plot_w / 2, canvas.height - 14), xlabel, anchor="mm")
    return canvas.save(path)


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
    canvas = _Canvas(len(panels), title=title, width=width, panel_height=panel_height,
                     bottom=30)
    group_w = canvas.plot_w / max(1, len(categories))
    left = canvas.left
    for i, panel in enumerate(panels):
        values = _finite(panel)
        lo = panel.ymin if panel.ymin is not None else min([0.0, *values])
        hi = panel.ymax if panel.ymax is not None else (max(values) * 1.08 if values else 1.0)
        if hi <= lo:
            hi = lo + 1.0
        y1_of = canvas.top + i * (panel_height + canvas.gap) + panel_height

        def py(v: float, lo: float = lo, hi: float = hi, y1: int = y1_of) -> float:
            return y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * panel_height

        y0, y1 = canvas.panel(i, panel.ylabel, _nice_ticks(lo, hi), py)
        n_series = max(1, len(panel.series))
        bar_w = group_w * 0.8 / n_series
        for j, (name, ys) in enumerate(panel.series.items()):
            colour = _COLOURS[j % len(_COLOURS)]
            for g, v in enumerate(ys):
                if g >= len(categories) or not math.isfinite(float(v)):
                    continue
                x0 = left + g * group_w + group_w * 0.1 + j * bar_w
                canvas.draw.rectangle((x0, py(float(v)), x0 + bar_w - 1, py(lo)), fill=colour)
                canvas.text((x0 + bar_w / 2, py(float(v)) - 2), _fmt(float(v)), anchor="mb")
            canvas.legend(y0, j, name, colour)
        if i == len(panels) - 1:
            for g, label in enumerate(categories):
                canvas.text((left + (g + 0.5) * group_w, y1 + 8), label, anchor="mt")
    return canvas.save(path)
