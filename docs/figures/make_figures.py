"""Figures of the Concepts page, computed with difftrust itself.

    .venv/bin/python docs/figures/make_figures.py        # writes docs/figures/*.png

* ``trust_region_cases.png``: three 2-D problems ``max g'x  s.t.  0.5 x'Hx <= delta,
  b + a'x <= 0`` (one per case the layer reports: trust-region, constrained, recovery),
  with the trust-region ellipse, the constraint line, ``g`` and the step returned by
  :class:`difftrust.TrustRegionStep`.
* ``dual_function.png``: the dual ``D(lam)`` of the constrained example over ``lam > 0``,
  its two pieces on ``La = {lam c + r > 0}`` and ``Lb = {lam c + r <= 0}``, their
  minimisers, and the ``lam`` returned by the layer.
* the PNG figures of ``benchmarks/results/`` are copied to ``docs/results/``.
* ``meta_gradient.png``: the computational graph of a K = 2 inner loop and which edges the
  meta-gradient differentiates.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from difftrust import TrustRegionStep  # noqa: E402

HERE = Path(__file__).resolve().parent
DT = torch.float64

H = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=DT)
DELTA = 0.5
G = torch.tensor([1.0, 0.35], dtype=DT)
A = torch.tensor([0.9, 0.45], dtype=DT)
# b per case: far from binding, binding, infeasible inside the trust region
CASES = {"trust-region": -1.6, "constrained": -0.25, "recovery": 1.3}


def solve(b: float):
    return TrustRegionStep(delta=DELTA).solve(G, A, b, H)


def trust_region_cases(path: Path) -> None:
    L = np.linalg.cholesky(H.numpy())
    t = np.linspace(0, 2 * np.pi, 400)
    # 0.5 x'Hx = delta  <=>  x = sqrt(2 delta) L'^-1 u, |u| = 1
    ellipse = math.sqrt(2 * DELTA) * np.linalg.solve(L.T, np.stack([np.cos(t), np.sin(t)]))
    free = solve(1e9 * -1).x.numpy()  # the unconstrained (natural-gradient) step
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), sharey=True)
    lim = 1.6
    xs = np.linspace(-lim, lim, 2)
    a = A.numpy()
    for ax, (name, b) in zip(axes, CASES.items(), strict=True):
        res = solve(b)
        assert res.case == name, (name, res.case)
        x = res.x.numpy()
        ax.fill(ellipse[0], ellipse[1], color="tab:blue", alpha=0.12, label="trust region 0.5 x'Hx <= delta")
        ax.plot(ellipse[0], ellipse[1], color="tab:blue", lw=1)
        # constraint line b + a'x = 0 and its infeasible side
        ys = -(b + a[0] * xs) / a[1]
        ax.plot(xs, ys, color="tab:red", lw=1.5, label="b + a'x = 0")
        top = np.full_like(xs, lim * 3)
        ax.fill_between(xs, ys, top, color="tab:red", alpha=0.08, hatch="//", label="b + a'x > 0 (violated)")
        scale = 0.45 / float(np.linalg.norm(G.numpy()))
        ax.annotate(
            "", xy=G.numpy() * scale, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="k", lw=1.5)
        )
        ax.text(*(G.numpy() * scale + [0.02, 0.06]), "g", fontsize=12)
        if name != "trust-region":
            ax.plot([0, free[0]], [0, free[1]], ls="--", color="0.5", lw=1, label="unconstrained step")
        ax.annotate("", xy=x, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="tab:green", lw=2.2))
        ax.plot(*x, "o", color="tab:green", ms=5, label="step x (difftrust)")
        ax.plot(0, 0, "k.", ms=6)
        ax.set_title(f'b = {b:+.2f}: case "{res.case}"')
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_xlabel("x[0]")
    axes[0].set_ylabel("x[1]")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle("max g'x  s.t.  0.5 x'Hx <= delta,  b + a'x <= 0   (H = [[2, .6], [.6, 1]], delta = 0.5)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dual_function(path: Path) -> None:
    b = CASES["constrained"]
    res = solve(b)
    Hinv = torch.linalg.inv(H)
    q = float(G @ Hinv @ G)
    r = float(G @ Hinv @ A)
    s = float(A @ Hinv @ A)
    c, delta = b, DELTA
    Acoef, Bcoef = q - r * r / s, 2 * delta - c * c / s
    brk = -r / c  # lam c + r = 0
    lam = np.linspace(0.05, 3.0, 600)
    d_a = 0.5 * (Acoef / lam + Bcoef * lam) - r * c / s
    d_b = 0.5 * (q / lam + 2 * delta * lam)
    in_a = lam * c + r > 0
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot(lam, np.where(in_a, d_a, d_b), color="k", lw=2.5, alpha=0.25, label="D(lam) (nu eliminated)")
    ax.plot(lam, d_a, color="tab:orange", ls="--", lw=1, label="piece on La: 0.5 (A/lam + B lam) - rc/s")
    ax.plot(lam, d_b, color="tab:purple", ls="--", lw=1, label="piece on Lb: 0.5 (q/lam + 2 delta lam)")
    ax.axvspan(lam[0], brk, color="tab:orange", alpha=0.07)
    ax.axvspan(brk, lam[-1], color="tab:purple", alpha=0.07)
    ax.axvline(brk, color="0.4", lw=0.8)
    lo = min(d_a.min(), d_b.min()) - 0.2
    hi = lo + 2.7
    ax.text(brk * 0.5, hi - 0.15, "La = {lam c + r > 0}", ha="center", color="tab:orange")
    ax.text(min(brk * 1.6, 2.6), hi - 0.15, "Lb = {lam c + r <= 0}", ha="center", color="tab:purple")
    lam_a = math.sqrt(Acoef / Bcoef)
    lam_b = math.sqrt(q / (2 * delta))
    for val, col, lab in ((lam_a, "tab:orange", "sqrt(A/B)"), (lam_b, "tab:purple", "sqrt(q / 2 delta)")):
        ax.axvline(val, color=col, ls=":", lw=1.2)
        ax.text(val, hi - 0.35, lab + " ", color=col, rotation=90, va="top", ha="right", fontsize=9)
    # each minimiser projected onto its own interval (an empty interval would be skipped)
    proj_a = min(lam_a, brk) if c < 0 else max(lam_a, brk)
    proj_b = max(lam_b, brk) if c < 0 else min(lam_b, brk)
    for val, piece, col in ((proj_a, "a", "tab:orange"), (proj_b, "b", "tab:purple")):
        dv = (
            0.5 * (Acoef / val + Bcoef * val) - r * c / s
            if piece == "a"
            else 0.5 * (q / val + 2 * delta * val)
        )
        ax.plot(val, dv, "x", color=col, ms=10, mew=2)
    ax.plot([], [], "kx", label="each minimiser projected onto its interval")
    lam_star = float(res.lam)
    d_star = (
        0.5 * (Acoef / lam_star + Bcoef * lam_star) - r * c / s
        if lam_star * c + r > 0
        else 0.5 * (q / lam_star + 2 * delta * lam_star)
    )
    ax.plot(lam_star, d_star, "o", color="tab:green", ms=8, label=f"difftrust: lam = {lam_star:.3f}")
    ax.set_ylim(lo, hi)
    ax.set_xlim(lam[0], lam[-1])
    ax.set_xlabel("lam")
    ax.set_ylabel("D(lam)")
    ax.set_title(f"Dual of the constrained example (b = {b}): minimise over lam > 0")
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.9))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def meta_gradient(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    nodes = {
        "theta": (0.6, 2.2),
        "phi0": (2.0, 2.2),
        "phi1": (4.6, 2.2),
        "phi2": (7.2, 2.2),
        "F": (9.3, 2.2),
        "D0": (2.0, 0.6),
        "D1": (4.6, 0.6),
        "Dv": (7.2, 0.6),
    }
    labels = {
        "theta": "theta",
        "phi0": "phi^0 = theta\n(a copy)",
        "phi1": "phi^1",
        "phi2": "phi^2",
        "F": "F, G",
        "D0": "D^0 ~ pi_phi^0",
        "D1": "D^1 ~ pi_phi^1",
        "Dv": "D^val ~ pi_phi^2",
    }
    for key, (x, y) in nodes.items():
        data = key.startswith("D")
        ax.text(
            x,
            y,
            labels[key],
            ha="center",
            va="center",
            fontsize=10,
            bbox=dict(boxstyle="round", fc="0.93" if data else "white", ec="0.6" if data else "k"),
        )

    def arrow(a, b, style, color, text=None, dy=0.18):
        (x0, y0), (x1, y1) = nodes[a], nodes[b]
        ax.annotate(
            "",
            xy=(x1 - 0.55 if y0 == y1 else x1, y1 - 0.35 if y0 != y1 and y1 > y0 else y1),
            xytext=(x0 + 0.55 if y0 == y1 else x0, y0 + 0.3 if y0 != y1 else y0),
            arrowprops=dict(arrowstyle="->", ls=style, color=color, lw=1.6),
        )
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + dy, text, ha="center", fontsize=8.5, color=color)

    arrow("theta", "phi0", "-", "tab:green")
    arrow(
        "phi0", "phi1", "-", "tab:green", "+ TrustRegionStep(g, A, b, H)\n(g, A, H: functions of phi^0)", 0.2
    )
    arrow("phi1", "phi2", "-", "tab:green", "+ TrustRegionStep(g, A, b, H)", 0.2)
    arrow("phi2", "F", "-", "tab:green")
    for d, p in (("D0", "phi1"), ("D1", "phi2"), ("Dv", "F")):
        (x0, y0), (x1, y1) = nodes[d], nodes[p]
        ax.annotate(
            "",
            xy=(x1 - 0.9, y1 - 0.3),
            xytext=(x0 + 0.4, y0 + 0.3),
            arrowprops=dict(arrowstyle="->", color="0.5", lw=1.2),
        )
    for p, d in (("phi0", "D0"), ("phi1", "D1"), ("phi2", "Dv")):
        (x0, y0), (x1, y1) = nodes[p], nodes[d]
        ax.annotate(
            "",
            xy=(x1, y1 + 0.3),
            xytext=(x0, y0 - 0.38),
            arrowprops=dict(arrowstyle="->", ls=":", color="tab:red", lw=1.4),
        )
    ax.text(
        5.0,
        3.35,
        "solid green: differentiated exactly (through every step, g, A and the Fisher H)",
        ha="center",
        color="tab:green",
        fontsize=9,
    )
    ax.text(
        5.0,
        3.05,
        "dotted red: sampling D ~ pi_phi, not differentiated (MAML-TRPO estimator); grey: data enters as constants",
        ha="center",
        color="tab:red",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def copy_benchmark_figures() -> None:
    """Copy the PNG figures of ``benchmarks/results/`` into ``docs/results/`` (the Results page)."""
    import shutil

    src = HERE.parents[1] / "benchmarks" / "results"
    dst = HERE.parent / "results"
    for png in sorted(src.glob("*.png")):
        shutil.copy2(png, dst / png.name)
        print(dst / png.name)


def main() -> None:
    copy_benchmark_figures()
    trust_region_cases(HERE / "trust_region_cases.png")
    dual_function(HERE / "dual_function.png")
    meta_gradient(HERE / "meta_gradient.png")
    for name in ("trust_region_cases.png", "dual_function.png", "meta_gradient.png"):
        print(HERE / name)


if __name__ == "__main__":
    main()
