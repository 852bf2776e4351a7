# Draws results.json as a grid of bar charts, one per figure, with k8stunnel's ratios written over its bars.
# Run by the bench driver: python3 -c "$(cat plot.py)" results.json results.png
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    res = json.load(f)

colors = {"direct": "#9e9e9e", "openssh": "#4a78b5", "sshuttle": "#d9822b"}
k8s_color = "#2e9e5b"


def fmt(v):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(v):
    if v is None:
        return "∞"
    if v >= 10:
        return f"{v:.0f}×"
    if v >= 1:
        return f"{v:.1f}×"
    return f"{v:.2f}×"


metrics = res["metrics"]
cols = 3
rows = (len(metrics) + cols - 1) // cols
fig, axes = plt.subplots(rows, cols, figsize=(15, 4.2 * rows))
for ax, m in zip(axes.flat, metrics):
    order = ["direct", "openssh", "sshuttle"] + sorted(k for k in m["values"] if k.startswith("k8stunnel"))
    names, values, bar_colors = [], [], []
    for k in order:
        if k in m["values"]:
            names.append(k.replace("k8stunnel ×", "k8stunnel\n×") + (" streams" if "×" in k else ""))
            values.append(m["values"][k])
            bar_colors.append(k8s_color if k.startswith("k8stunnel") else colors[k])
        elif k in m.get("errors", {}):
            names.append(k + "\n(failed)")
            values.append(0)
            bar_colors.append(colors.get(k, k8s_color))
    ax.set_title(f'{m["title"]} ({m["unit"]}, {m["better"]} is better)', fontsize=10)
    if not values:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        continue
    bars = ax.bar(range(len(values)), values, color=bar_colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(names, fontsize=8)
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    top = max(values) if values else 1
    for b, v, k in zip(bars, values, [k for k in order if k in m["values"] or k in m.get("errors", {})]):
        label = fmt(v)
        if k.startswith("k8stunnel"):
            rat = m.get("ratios", {}).get(k, {})
            parts = [f"{fmt_ratio(rat[o])} {o}" for o in ("sshuttle", "openssh") if o in rat]
            if parts:
                label += "\n" + "\n".join(parts)
        ax.annotate(label, (b.get_x() + b.get_width() / 2, max(v, 1e-9)), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points")
    ax.margins(y=0.35)
for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
s = res["settings"]
fig.suptitle(f'k8stunnel vs direct routing, OpenSSH (ssh -L) and sshuttle — one run, {res["cpus"]} CPUs, '
             f'{s["cipher"]}, {res["date"]}', fontsize=12)
fig.tight_layout(rect=(0, 0, 1, 0.97))
fig.savefig(dst, dpi=90)
