"""
Inference behind :class:`enet_ros.segmenter.Segmenter`: torch and numpy only, no ROS.

(OpenVINO, optional, for the ``openvino`` backend only, imported when it is used.)

Modules, in dependency order:

* ``cpu_runtime``: the CPU's instruction sets and the process's OpenMP wait,
  standard library only (the node calls it before torch loads).
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
  graph per frame size), ``openvino_backend`` (OpenVINO's CPU plugin).
* ``backends``: which runtime runs the CPU path (``inference_backend``), the
  threads, and the fall-back to torch.
"""
