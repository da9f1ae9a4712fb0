"""enet_ros: ENet semantic segmentation for ROS 2 (ament_python package)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'enet_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'training', 'training.*', 'bench']),
    package_data={PACKAGE: ['models/*.safetensors', 'models/*.md']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
    ],
    install_requires=['setuptools', 'numpy', 'torch', 'safetensors'],
    # 'test': colcon test runs pytest for it (setuptools 72 and later drop tests_require,
    # and colcon then fell back to unittest, which found no test).
    # 'openvino': the CPU backend inference_backend 'auto' picks on CPUs without AVX-512.
    extras_require={'bags': ['rosbags>=0.10.9', 'tqdm'], 'report': ['matplotlib'],
                    'test': ['pytest'], 'openvino': ['openvino>=2026.4.1']},
    zip_safe=False,
    maintainer='enet_ros developers',
    maintainer_email='dev@enet-ros.local',
    description='ENet semantic segmentation node for ROS 2, with rosbag replay evaluation',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'segmentation_node = enet_ros.node.main:main',
            'segmentation_lifecycle_node = enet_ros.node.lifecycle_main:main',
            'dataset_to_bag = enet_ros.evaluation.dataset_to_bag:main',
            'evaluate_bag = enet_ros.evaluation.evaluate_bag:main',
            'live_evaluate = enet_ros.evaluation.live_evaluate:main',
        ],
    },
)
