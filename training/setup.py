"""enet_training: trains ENet and exports enet_ros model files; needs the enet_ros core only."""

from setuptools import find_packages, setup

setup(
    name='enet_training',
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    python_requires='>=3.10',
    install_requires=['enet_ros', 'torch', 'numpy', 'opencv-python-headless', 'safetensors',
                      'pyyaml', 'tqdm', 'tensorboard'],
    # enet-train export --onnx: the export and its check with ONNX Runtime.
    extras_require={'onnx': ['onnx', 'onnxruntime']},
    entry_points={'console_scripts': ['enet-train = enet_training.cli:main']},
)
