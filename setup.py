"""pip install path for lifelong_ros (no ROS needed); colcon builds the package via CMakeLists.txt."""
from setuptools import setup

# torch must already be installed as torch==2.13.0 (CPU wheel) before this runs: see README / Makefile.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "numpy>=1.26",
    "onnx>=1.17",
    "onnxruntime>=1.20",
    "metaworld==3.1.1",
    "rosbags>=0.11,<0.12",
    "pyyaml>=6",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",
    "safetensors>=0.4",
]
TEST_REQUIRES = ["pytest>=7.4", "pytest-timeout>=2.3", "hypothesis>=6.100"]

NODES = ["policy_server", "experience_buffer", "learner", "safety_monitor", "sim_bridge", "offline_learn"]

setup(
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={
        "console_scripts": ["lifelong-ros = lifelong_ros.cli:main"]
        + [f"{n} = lifelong_ros.nodes.{n}:main" for n in NODES],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/lifelong_ros"]),
        ("share/lifelong_ros", ["package.xml"]),
    ],
)
