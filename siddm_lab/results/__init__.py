"""Results of sweeps, the library side of ``siddm-collect``: the jobs' rows (``jobs``), markdown tables
(``tables``), plots (``plots``) and the whole report of a sweep folder (``report``)."""

from siddm_lab.results.jobs import collect, read_history
from siddm_lab.results.plots import plot_bars, plot_curves, plot_scatter, plot_vs_nfe
from siddm_lab.results.report import SweepReport, log_to_wandb, write_report
from siddm_lab.results.tables import QUALITY_RULE, baseline_comparison, listing, load_paper, pivot, reaches_quality

__all__ = ["QUALITY_RULE", "SweepReport", "baseline_comparison", "collect", "listing", "load_paper", "log_to_wandb",
           "pivot", "plot_bars", "plot_curves", "plot_scatter", "plot_vs_nfe", "reaches_quality", "read_history",
           "write_report"]
