"""The report's trend plot, test MSE over the last runs, drawn as SVG by hand: no matplotlib (0.7 s to import)
in a run whose stages are all Cached, and ticks a reader reads at a glance (whole run numbers, plain numbers).

It draws only numbers and fixed words, never a string from the data; the UI shows it as an ``<img>`` from a
``data:image/svg+xml`` URI, where a browser runs no script and fetches nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

__all__ = ["curves", "svg"]

WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 36, 48  # the plot area's margins, in pixels
LOG_SPAN = 50.0  # a log axis when the largest MSE is at least this many times the smallest
LINE, STAR = "#1f77b4", "#ff7f0e"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MAX_POINTS = 400  # per curve: a long history is thinned to this many epochs (an SVG the UI draws at once)
MAX_LEGEND = 20  # configurations named in the legend; the rest are drawn, not listed


def svg(mse: Sequence[float | None], promoted: Sequence[bool]) -> bytes:
    """Test MSE of each run, oldest first (run 1 on the left), promoted runs starred; ``None`` where a run had none."""
    points = [(i + 1, m) for i, m in enumerate(mse) if m is not None and math.isfinite(m)]
    count = len(mse)
    log = bool(points) and min(m for _, m in points) > 0 and _span(points) >= LOG_SPAN
    ys = [math.log10(m) if log else m for _, m in points]
    low, high = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (high - low) * 0.06 or (abs(high) * 0.1 if high else 1.0)
    low, high = low - pad, high + pad
    yticks = _log_ticks(low, high) if log else _ticks(low, high)

    def x(run: float) -> float:
        return LEFT + (run - 0.5) / max(count, 1) * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * (HEIGHT - TOP - BOTTOM)

    out = _frame(
        f"Test MSE over the last {count} runs",
        "run (oldest first)",
        f"test MSE{' (log scale)' if log else ''}",
        [(y(v), label) for v, label in yticks],
        [(x(run), str(run)) for run in _run_ticks(count)],
    )
    xy = [(x(run), y(v)) for (run, _), v in zip(points, ys, strict=True)]
    if len(xy) > 1:
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
        out.append(f'<polyline points="{path}" fill="none" stroke="{LINE}" stroke-width="1.5"/>')
    out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{LINE}"/>' for a, b in xy]
    won = [(a, b) for (run, _), (a, b) in zip(points, xy, strict=True) if promoted[run - 1]]
    out += [f'<polygon points="{_star(a, b)}" fill="{STAR}" stroke="#a0522d" stroke-width="0.5"/>' for a, b in won]
    legend = WIDTH - RIGHT - 150
    out += [
        f'<circle cx="{legend}" cy="{TOP + 14}" r="3" fill="{LINE}"/>',
        f'<text x="{legend + 10}" y="{TOP + 18}">test MSE</text>',
        f'<polygon points="{_star(legend + 75, TOP + 14)}" fill="{STAR}"/>',
        f'<text x="{legend + 85}" y="{TOP + 18}">promoted</text>',
        "</svg>",
    ]
    return "\n".join(out).encode()


def curves(histories: Mapping[int, Sequence[float]]) -> bytes:
    """Training loss per epoch of several configurations in one plot, log-scale y; each curve in the legend by
    its configuration number only (``histories``: number → the loss of each epoch). Non-positive or non-finite
    losses (a diverged epoch) are not drawn."""
    kept = {
        n: [(e + 1, math.log10(v)) for e, v in enumerate(h) if math.isfinite(v) and v > 0] for n, h in histories.items()
    }
    kept = {n: points for n, points in kept.items() if points}
    ys = [v for points in kept.values() for _, v in points]
    low, high = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (high - low) * 0.06 or 0.5
    low, high = low - pad, high + pad
    epochs = max((points[-1][0] for points in kept.values()), default=1)

    def x(epoch: float) -> float:
        return LEFT + (epoch - 1) / max(epochs - 1, 1) * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * (HEIGHT - TOP - BOTTOM)

    decades = _log_ticks(low, high) or [(v, _plain(10.0**v)) for v in (low + pad, high - pad)]
    out = _frame(
        f"Training loss of {len(kept)} configurations",
        "epoch",
        "training MSE (log scale)",
        [(y(v), label) for v, label in decades],
        [(x(e), str(e)) for e in _ticks_at(epochs)],
    )
    for i, (n, points) in enumerate(sorted(kept.items())):
        color = PALETTE[i % len(PALETTE)]
        step = max(1, math.ceil(len(points) / MAX_POINTS))
        shown = points[::step] if points[::step][-1] == points[-1] else [*points[::step], points[-1]]
        path = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in shown)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if i < MAX_LEGEND:
            top = TOP + 8 + 14 * i
            out.append(
                f'<line x1="{WIDTH - RIGHT - 60}" x2="{WIDTH - RIGHT - 44}" y1="{top}" y2="{top}" '
                f'stroke="{color}" stroke-width="2"/>'
            )
            out.append(f'<text x="{WIDTH - RIGHT - 40}" y="{top + 4}">#{int(n)}</text>')
    out.append("</svg>")
    return "\n".join(out).encode()


def _frame(
    title: str, xlabel: str, ylabel: str, yticks: list[tuple[float, str]], xticks: list[tuple[float, str]]
) -> list[str]:
    """The SVG's head, title, grid, tick labels (at pixel positions), plot area and axis labels."""
    bottom, inside = HEIGHT - BOTTOM, WIDTH - LEFT - RIGHT
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for at, label in yticks:
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{at:.1f}" y2="{at:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{at + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    for at, label in xticks:
        out.append(f'<text x="{at:.1f}" y="{bottom + 18}" text-anchor="middle">{escape(label)}</text>')
    return [
        *out,
        f'<rect x="{LEFT}" y="{TOP}" width="{inside}" height="{bottom - TOP}" fill="none" stroke="#888"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(xlabel)}</text>',
        f'<text transform="translate(16 {(TOP + bottom) / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(ylabel)}</text>",
    ]


def _ticks_at(count: int) -> list[int]:
    """Epoch ticks: 1 and round numbers up to ``count``, about six of them."""
    raw = max(count / 6, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [1, *range(step, count + 1, step)] if step > 1 else list(range(1, count + 1))


def _span(points: list[tuple[int, float]]) -> float:
    values = [m for _, m in points]
    return max(values) / min(values)


def _ticks(low: float, high: float, target: int = 5) -> list[tuple[float, str]]:
    """Ticks at 1, 2, 2.5 or 5 × 10^k inside [low, high], labelled with just the decimals their step needs."""
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if round(step / magnitude, 6) == 2.5 else 0))
    first = math.ceil(low / step)
    ticks = []
    for k in range(first, first + 2 * target + 2):
        value = k * step
        if value > high:
            break
        ticks.append((value, f"{value:,.{decimals}f}"))
    return ticks


def _log_ticks(low: float, high: float) -> list[tuple[float, str]]:
    """Ticks at the powers of ten inside [low, high] (log10 units), labelled as plain numbers."""
    return [(float(k), _plain(10.0**k)) for k in range(math.ceil(low), math.floor(high) + 1)]


def _plain(value: float) -> str:
    if 1e-6 <= value < 1e9:
        return f"{value:,.{max(0, -round(math.log10(value)))}f}"
    return f"1e{round(math.log10(value))}"


def _run_ticks(count: int) -> list[int]:
    """Whole run numbers, at most about ten of them."""
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000) if count / s <= 10) if count else 1
    return [1, *range(step, count + 1, step)] if step > 1 else list(range(1, count + 1))


def _star(cx: float, cy: float, outer: float = 7.0, inner: float = 3.0) -> str:
    corners = []
    for i in range(10):
        radius, angle = (outer if i % 2 == 0 else inner), math.pi / 2 + i * math.pi / 5
        corners.append(f"{cx + radius * math.cos(angle):.1f},{cy - radius * math.sin(angle):.1f}")
    return " ".join(corners)
