"""Figures for the model cache: bytes held against the budget over time."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..cache.stats import CacheStats

_MARKS = {  # event -> (label, colour, marker)
    "hit": ("hit", "#55a868", "|"),
    "miss": ("miss", "#dd8452", "|"),
    "evict": ("eviction", "#c44e52", "v"),
    "refused": ("refused", "#8172b3", "x"),
    "uncached": ("served uncached", "#8172b3", "+"),
}


def plot_cache_timeline(stats: CacheStats, x: str = "time") -> Figure:
    """Bytes held (step line) against the budget, with hits, misses and evictions marked.

    Args:
        stats: ``cache.stats()``; its event log is drawn.
        x: ``"time"`` (seconds since the cache was created) or ``"event"`` (event number,
            which spreads out bursts of fast operations).

    Returns:
        A figure: the upper panel shows bytes held and the budget line, evictions marked
        where they happened (by reason in the legend); the lower strip shows each hit and miss.

    Raises:
        ValueError: an unknown ``x``.
    """
    if x not in ("time", "event"):
        raise ValueError(f"x must be 'time' or 'event', found {x!r}")
    events = stats.events
    xs = [e.time if x == "time" else i for i, e in enumerate(events)]
    unit, mib = next((u, f) for u, f in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024),
                                          ("bytes", 1)) if stats.max_bytes >= f)
    fig = Figure(figsize=(8, 4))
    top, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    top.step(xs, [e.held / mib for e in events], where="post", color="#4c72b0", lw=1.5,
             label="bytes held")
    top.axhline(stats.max_bytes / mib, color="#c44e52", ls="--", lw=1, label="budget")
    reasons = sorted({e.reason for e in events if e.event == "evict"})
    for reason, marker in zip(reasons, "v^<>sd*", strict=False):
        pts = [(xv, e.held / mib) for xv, e in zip(xs, events, strict=True)
               if e.event == "evict" and e.reason == reason]
        top.scatter(*zip(*pts, strict=True), marker=marker, color="#c44e52", zorder=3, s=28,
                    label=f"eviction ({reason})")
    for name in ("refused", "uncached"):
        label, colour, marker = _MARKS[name]
        pts = [(xv, e.held / mib) for xv, e in zip(xs, events, strict=True) if e.event == name]
        if pts:
            top.scatter(*zip(*pts, strict=True), marker=marker, color=colour, zorder=3,
                        label=label)
    top.set_ylabel(f"{unit} held")
    top.set_ylim(0, stats.max_bytes / mib * 1.15)
    top.legend(loc="lower right", fontsize=7, ncol=2)
    top.set_title(f"Cache timeline: {stats.hits} hits, {stats.misses} misses, "
                  f"{stats.evictions_total} evictions")
    for row, name in enumerate(("hit", "miss")):
        label, colour, marker = _MARKS[name]
        ticks = [xv for xv, e in zip(xs, events, strict=True) if e.event == name]
        strip.scatter(ticks, [row] * len(ticks), marker=marker, color=colour, s=60, label=label)
    strip.set_yticks([0, 1], ["hit", "miss"], fontsize=8)
    strip.set_ylim(-0.6, 1.6)
    strip.set_xlabel("seconds since the cache was created" if x == "time" else "event number")
    fig.tight_layout()
    return fig
