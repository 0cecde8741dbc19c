"""Models: the lightweight HRNet with 64 to 4 pixel heatmaps, and its cost table."""

from popos.models.hrnet import ARCHITECTURES, HRNetHeatmap, StemRow, build_model
from popos.models.stats import model_stats, print_model_table

__all__ = ["ARCHITECTURES", "HRNetHeatmap", "StemRow", "build_model", "model_stats",
           "print_model_table"]
