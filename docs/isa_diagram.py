"""Draw docs/isa.png: one ISA plan, made by `liveditor.isa.plan_isa` on a toy sequence, block by block.

    .venv/bin/python docs/isa_diagram.py          # rewrites docs/isa.png

The toy: 8 target blocks and 8 context blocks of 64 tokens, one head, random q and k with a few
context blocks made salient, and ratios chosen so that every kind of decision shows at this size
(keep 2 of 8 context blocks, half the query blocks full, 2 exact KV blocks per Taylor query block).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from liveditor.isa import ISAConfig, plan_isa  # noqa: E402

NBT, NBS, BLOCK, D = 8, 8, 64, 16
CFG = ISAConfig(block_size=BLOCK, context_keep_ratio=0.25, full_query_ratio=0.5, exact_kv_ratio=0.25)
COLOURS = {"exact": "#1f4e8c", "centroid": "#9ec5ec", "outside": "#e9e9e9"}


def toy_plan():
    g = torch.Generator().manual_seed(3)
    s = (NBT + NBS) * BLOCK
    q = torch.randn(1, s, 1, D, generator=g)
    k = torch.randn(1, s, 1, D, generator=g)
    # Each key block gets a direction of its own. Some query blocks point at one target key block
    # (sharp: their coarse attention peaks), the others at nothing in particular (diffuse).
    dirs = torch.randn(NBT + NBS, D, generator=g) * 1.5
    sharp = {1, 2, 4, 6, NBT + 0, NBT + 3, NBT + 5, NBT + 6}
    for b in range(NBT + NBS):
        k[0, b * BLOCK:(b + 1) * BLOCK, 0] += dirs[b]
        rows = slice(b * BLOCK, (b + 1) * BLOCK)
        q[0, rows, 0] = q[0, rows, 0] + 3 * dirs[b % NBT] if b in sharp else 0.2 * q[0, rows, 0]
    k[0, (NBT + 2) * BLOCK:(NBT + 3) * BLOCK, 0] += dirs[:NBT].mean(0) * 2  # context blocks the target looks at
    k[0, (NBT + 5) * BLOCK:(NBT + 6) * BLOCK, 0] += dirs[:NBT].mean(0) * 2
    return plan_isa(q, k, NBT * BLOCK, CFG)


def block_map(plan) -> np.ndarray:
    """`[nb, nb]` codes per (query block, KV block): 2 exact, 1 centroid term, 0 not in the KV set."""
    nb = NBT + NBS
    m = np.zeros((nb, nb), dtype=int)
    kv = plan.kv_blocks[0, 0].tolist()
    for qb in plan.full_query_blocks[0, 0].tolist():
        m[qb, kv] = 2
    for i, qb in enumerate(plan.taylor_query_blocks[0, 0].tolist()):
        m[qb, kv] = 1
        m[qb, plan.taylor_exact_kv_blocks[0, 0, i].tolist()] = 2
    return m


def draw(path: Path) -> Path:
    plan = toy_plan()
    m = block_map(plan)
    nb = NBT + NBS
    kept = set(plan.kept_context_blocks[0, 0].tolist())
    full = set(plan.full_query_blocks[0, 0].tolist())
    fig = plt.figure(figsize=(12, 6.4))
    # Left: the in-context sequence and the coarse pass.
    ax = fig.add_axes([0.03, 0.1, 0.36, 0.8])
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 10)
    ax.axis("off")
    ax.text(0, 9.6, "1. Blocks (64 tokens each), per segment", fontsize=11, weight="bold")
    for b in range(nb):
        x = 0.2 + b * 0.5
        colour = "#f2b134" if b < NBT else ("#5aa469" if b in kept else "#d0d0d0")
        ax.add_patch(Rectangle((x, 8.3), 0.45, 0.8, color=colour))
    ax.text(0.2, 7.85, "target (noisy edit)", fontsize=9)
    ax.text(0.2 + NBT * 0.5, 7.85, "context (source video)", fontsize=9)
    ax.text(0, 7.0, "2. Coarse attention over block means:", fontsize=11, weight="bold")
    ax.text(0.2, 6.45, r"$P_c=\mathrm{softmax}(q_c k_c^\top/\sqrt{D})$, $out_c = P_c v_c$", fontsize=10)
    ax.text(0, 5.6, "3. Keep the context blocks the target", fontsize=11, weight="bold")
    ax.text(0.3, 5.1, f"attends most (green: {len(kept)} of {NBS} here).", fontsize=10)
    ax.text(0.3, 4.6, "KV set = target blocks + kept context.", fontsize=10)
    ax.text(0, 3.8, "4. Route each query block by sharpness:", fontsize=11, weight="bold")
    ax.text(0.3, 3.3, "the sharpest half: exact attention over", fontsize=10)
    ax.text(0.3, 2.85, "the KV set; the rest: exact on their top", fontsize=10)
    ax.text(0.3, 2.4, "KV blocks + one centroid term per other", fontsize=10)
    ax.text(0.3, 1.95, "KV block (0-th order Taylor; none dropped).", fontsize=10)
    ax.text(0, 1.15, "5. out = routed + gate * out_c", fontsize=11, weight="bold")
    ax.text(0.3, 0.6, "(gate: learned, one value per token)", fontsize=10)
    # Right: the block map.
    ax2 = fig.add_axes([0.42, 0.2, 0.36, 0.68])
    rgb = np.array([[int(COLOURS[c][i:i + 2], 16) / 255 for i in (1, 3, 5)] for c in ("outside", "centroid", "exact")])
    ax2.imshow(rgb[m], interpolation="nearest")
    ax2.axhline(NBT - 0.5, color="k", lw=1.5)
    ax2.axvline(NBT - 0.5, color="k", lw=1.5)
    ax2.set_xticks(range(nb))
    ax2.set_xticklabels([f"T{b}" if b < NBT else (f"C{b - NBT}*" if b in kept else f"C{b - NBT}") for b in range(nb)],
                        fontsize=8, rotation=90)
    ax2.set_yticks(range(nb))
    ax2.set_yticklabels([("full  " if b in full else "taylor ") + (f"T{b}" if b < NBT else f"C{b - NBT}") for b in range(nb)],
                        fontsize=8, family="monospace")
    ax2.set_xlabel("key/value block (* = kept context block)")
    ax2.set_ylabel("query block (route)")
    ax2.set_title("How each (query block, key block) pair is computed", fontsize=11)
    ax2.legend(handles=[Patch(color=COLOURS["exact"], label="exact softmax attention"),
                        Patch(color=COLOURS["centroid"], label="one centroid term (Taylor)"),
                        Patch(color=COLOURS["outside"], label="not attended (coarse out_c only)")],
               loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.text(0.42, 0.025, "A plan made by liveditor.isa.plan_isa on a toy sequence (docs/isa_diagram.py);\n"
             "ratios chosen so that every decision shows at this size.", fontsize=8, color="#555555")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw(Path(__file__).with_name("isa.png")))
