"""Plots bench/quality.json (written by `cargo bench --bench quality`) as bench/quality.png."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).resolve().parent
q = json.loads((here / "quality.json").read_text())
shares = [s * 100 for s in q["shares"]]
fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
ax.plot(shares, [a * 100 for a in q["oracle"]], color="0.6", linestyle=":", label="oracle (knows the answers)")
ax.plot(shares, [a * 100 for a in q["router"]], color="tab:blue", linewidth=2, label=f"quality-router {q['model']}")
ax.plot(shares, [a * 100 for a in q["random"]], color="tab:red", linestyle="--", label="random router")
for x, name in [(q["cpt50"], "CPT(50%)"), (q["cpt80"], "CPT(80%)")]:
    ax.axvline(x * 100, color="tab:blue", alpha=0.25)
    ax.annotate(f"{name} = {x:.2f}", (x * 100, q["weak"] * 100 + 0.4), rotation=90, fontsize=8, color="tab:blue", ha="right")
ax.set_xlabel("share of prompts sent to the strong model (GPT-4), %")
ax.set_ylabel("accuracy on held-out MMLU, %")
ax.set_title(f"Quality-cost curve: {q['questions']} held-out MMLU questions, weak Mixtral-8x7B vs strong GPT-4", fontsize=9)
ax.set_xlim(0, 100)
ax.grid(alpha=0.3)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(here / "quality.png")
print(f"Wrote {here / 'quality.png'}")
