from setuptools import find_packages, setup

setup(
    name="edge-ai-testbed",
    version="0.1.0",
    description="Emulated mobile/edge/cloud testbed for Edge AI deployment strategies",
    python_requires=">=3.10",
    packages=find_packages(include=["testbed*", "topologies*", "emulation*", "workloads*"]),
    install_requires=[
        # pinned: results must be reproducible; see requirements.txt for the full lock
        "mininet==2.3.0.dev6",
        "pyroute2==0.9.7",
        "cgroupspy==0.2.3",
        "click==8.5.1",
        "pyyaml==6.0.3",
        "rich==15.0.0",
        "psutil==7.2.2",
    ],
    extras_require={"test": ["pytest==9.2.0", "pytest-timeout==2.4.0"]},
    entry_points={"console_scripts": ["testbed=testbed.cli:main"]},
)
