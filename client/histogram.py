"""A histogram of per-image scores against the training reference, drawn with Pillow (no matplotlib in
a serving install): grey bars for the scores, vertical lines at the reference's p01 (red), p50 (green)
and p99 (blue)."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["histogram_png"]

_W, _H, _M = 720, 360, 40  # size and margin, pixels
_LINES = (("p01", (200, 30, 30)), ("p50", (30, 150, 30)), ("p99", (30, 60, 200)))


def histogram_png(scores: np.ndarray, reference: dict[str, float] | None, *, bins: int = 40,
                  title: str = "ELBO per image (nats)") -> bytes:
    """PNG bytes of the histogram of `scores` (finite values) with the reference's quantile lines."""
    from PIL import Image, ImageDraw

    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    marks = [reference[k] for k, _ in _LINES] if reference else []
    lo = float(min([*s.tolist(), *marks])) if len(s) or marks else 0.0
    hi = float(max([*s.tolist(), *marks])) if len(s) or marks else 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(s, bins=bins, range=(lo, hi))
    img = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = _M, _W - _M // 2, _H - _M, _M  # plot area: y0 is the baseline

    def x_of(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    top = max(1, int(counts.max()) if len(counts) else 1)
    for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            draw.rectangle([x_of(a), y0 - (y0 - y1) * c / top, max(x_of(a), x_of(b) - 1), y0],
                           fill=(150, 150, 150))
    draw.line([x0, y0, x1, y0], fill="black")
    for row, (key, colour) in enumerate(_LINES if reference else ()):
        x = x_of(reference[key])  # type: ignore[index]
        draw.line([x, y1 - 10, x, y0], fill=colour, width=2)
        label = f"train {key}"
        # Staggered rows so close quantiles stay readable; left of the line near the right edge.
        tx = x + 3 if x < _W - 80 else x - 8 * len(label)
        draw.text((tx, y1 - 12 + 12 * row), label, fill=colour)
    draw.text((x0, 8), f"{title}: n={len(s)}, max count {top}", fill="black")
    draw.text((x0, y0 + 6), f"{lo:.1f}", fill="black")
    draw.text((x1 - 50, y0 + 6), f"{hi:.1f}", fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
