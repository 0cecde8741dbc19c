"""The report's figures, one module per figure, each a function returning a matplotlib ``Figure``:

* :mod:`.radar` (Figure 3), :mod:`.ablation` (Figure 4), :mod:`.sweeps` (Figure 5),
  :mod:`.overlays` (Figure 6), :mod:`.ced` (CED curves), :mod:`.speed` (Table 2 as bars),
  :mod:`.nme_grid` (NME per decoder x heatmap size per dataset).

Colours, labels and shared helpers come from :mod:`popos.report.style`; seaborn draws what it has a form
for (ECDFs, bars, lines, heatmaps), matplotlib the rest (radar, overlays).
"""
