"""The dashboard's charts, drawn on the server as SVG with pygal.

Each chart is its own ``image/svg+xml`` answer, shown with ``<img>``: an SVG image runs no script,
and pygal's own script is switched off anyway (``js=[]``), so the pages keep their script-free
policy (pygal's embedded configuration script is removed too).  pygal styles its SVG with an embedded ``<style>``; the chart answers (and only they)
allow that inline style.  Labels (agent ids, template names, reason codes) are text nodes that
pygal escapes.

pygal is imported on first use (0.3 s): a broker that nobody opens the dashboard of never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from xml.etree import ElementTree

from broker.usecases.review import Figures

# At most this many bars in a ranked chart (reasons, agents); the tables beside them list all.
TOP = 12
COLOURS = ("#1f5fbf", "#b3261e", "#c79100", "#5b6573", "#7a2e8e", "#17603a")
# What a chart answer may load: nothing, and its embedded style.
CHART_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


def _chart(kind: str, **config: Any):
    import pygal
    from pygal.style import Style

    style = Style(background="#ffffff", plot_background="#ffffff", foreground="#1d2430",
                  foreground_strong="#1d2430", foreground_subtle="#5b6573", colors=COLOURS,
                  font_family="system-ui, sans-serif", label_font_size=11, major_label_font_size=11,
                  legend_font_size=12, title_font_size=14, value_font_size=11)
    chart = getattr(pygal, kind)(js=[], style=style, width=640, height=300, legend_at_bottom=True,
                                 legend_at_bottom_columns=4, no_data_text="No entries in this range",
                                 print_values=False, show_x_guides=False, **config)
    return chart


def _svg(chart) -> str:
    """The chart as SVG text, without the configuration script pygal always embeds (an ``<img>`` would not
    run it, and the chart's policy forbids it anyway: it is removed rather than left inert)."""
    tree = chart.render_tree()
    for parent in list(tree.iter()):
        for child in list(parent):
            if isinstance(child.tag, str) and child.tag.rsplit("}", 1)[-1] == "script":
                parent.remove(child)
    return ElementTree.tostring(tree, encoding="unicode")


def _ranked(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP]


def over_time(figures: Figures) -> str:
    chart = _chart("StackedBar", title=f"Outcomes per {figures.bucket_unit} (UTC)", x_label_rotation=30,
                   show_minor_x_labels=False, truncate_label=-1)
    chart.x_labels = figures.buckets
    every = max(1, len(figures.buckets) // 8)
    chart.x_labels_major = figures.buckets[::every]
    for name, values in figures.over_time.items():
        chart.add(name, values)
    return _svg(chart)


def refusals(figures: Figures) -> str:
    chart = _chart("HorizontalBar", title="Refusals by reason", show_legend=False)
    ranked = _ranked(figures.refusals_by_reason)
    chart.x_labels = [reason for reason, _ in ranked]
    chart.add("refusals", [count for _, count in ranked])
    return _svg(chart)


def time_to_approve(figures: Figures) -> str:
    chart = _chart("Bar", title="Time from request to approval", show_legend=False)
    chart.x_labels = list(figures.wait_buckets)
    chart.add("approved requests", list(figures.wait_buckets.values()))
    return _svg(chart)


def live_grants(figures: Figures) -> str:
    chart = _chart("HorizontalBar", title="Live grants by agent and template", show_legend=False)
    rows = figures.live_grants[:TOP]
    chart.x_labels = [f"{row['agent']} · {row['template']}" for row in rows]
    chart.add("live grants", [row["grants"] for row in rows])
    return _svg(chart)


def revocations(figures: Figures) -> str:
    chart = _chart("Bar", title="Revocations and lockdowns", show_legend=False, x_label_rotation=20)
    chart.x_labels = list(figures.revocations)
    chart.add("entries", list(figures.revocations.values()))
    return _svg(chart)


# chart name -> (the dashboard part it needs, how it is drawn)
CHARTS: dict[str, tuple[str, Callable[[Figures], str]]] = {
    "over-time": ("over_time", over_time),
    "refusals": ("refusals", refusals),
    "time-to-approve": ("time_to_approve", time_to_approve),
    "live-grants": ("live_grants", live_grants),
    "revocations": ("revocations", revocations),
}
