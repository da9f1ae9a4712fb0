"""
Inference behind :class:`enet_ros.segmenter.Segmenter`: torch and numpy only, no ROS.

Modules, in dependency order:

* ``config``: construction-time choices (device, precision, sizes, compiler,
  cuDNN) and ``SegmenterConfigError``.
* ``fold``: BatchNorm folded into the convolutions (inference copy of ENet).
* ``network``: the network a path runs (built, folded, cast with an fp16
  range check, memory format).
* ``frames``: per-frame pre- and post-processing shared by every path, and
  the array contract.
* ``graph_cache``: bounded cache of captures with per-key failure memory.
* ``device_images``: the node's colour, overlay and drivable images with
  torch (the CUDA graph path draws them in the frame's graph).
* The execution paths, one object each, chosen once by the Segmenter:
  ``eager`` (the reference, and the interface the others extend),
  ``compiled_cpu`` (``torch.compile`` on the CPU), ``cuda_graphs`` (one CUDA
  graph per frame size).
"""
