"""popos: heatmap-based facial landmark detection with fast, robust sub-pixel decoders.

Conventions used everywhere in the package:

* coordinates are ``(x, y)`` floats; pixel ``i`` has its centre at coordinate ``i``;
* heatmap coordinates are input coordinates divided by ``stride = input_size / heatmap_size``
  (see :mod:`popos.geometry`);
* heatmaps are float tensors ``[..., K, H, W]``; decoders return float32 ``[..., K, 2]``.
"""

__version__ = "0.1.0"
