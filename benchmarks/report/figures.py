"""NDCG@10 against inference throughput: the figure beside a results page."""

from benchmarks.protocol import is_diffusion

__all__ = ["render_plot"]


def render_plot(summary, path, title):
    """NDCG@10 against users per second (log x), one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, s in summary.items():
        x = s["cost"]["users_per_second"]
        y = s["mean"]["ndcg@10"]
        if x is None or y is None:
            continue
        diffusion = is_diffusion(model)
        ax.errorbar(
            x,
            y,
            yerr=s["std"]["ndcg@10"] or 0,
            fmt="o" if diffusion else "s",
            color="tab:red" if diffusion else "tab:blue",
            capsize=3,
        )
        ax.annotate(
            model, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9
        )
    ax.set_xscale("log")
    ax.set_xlabel("full-sort inference throughput (users/s, log scale)")
    ax.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="s", color="tab:blue", ls="", label="baseline"),
        plt.Line2D([], [], marker="o", color="tab:red", ls="", label="diffusion"),
    ]
    ax.legend(handles=handles, loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
