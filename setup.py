"""imagegen: Spark preprocessing of image collections into Parquet, and distributed GAN/VAE training on it.

Install through scripts/setup.sh (it pins the stack and builds horovod); `pip install -e .`
alone installs only the four packages and the `imagegen` console script.
"""
from setuptools import find_packages, setup

setup(
    name="imagegen",
    version="0.1.0",
    description="Spark image preprocessing to Parquet and distributed GAN/VAE training",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines*", "training*", "schemas*", "jobs*"]),
    package_data={"jobs": ["templates/*.html"]},  # the report's Jinja2 templates (jobs/report.py)
    install_requires=[
        "pyspark>=4.0,<4.1",
        "pyarrow==14.0.2",
        "petastorm==0.12.1",
        "numpy<2",
        "pandas>=2.2,<2.3",
        "pillow",
        "imagehash",
        "torch==2.13.*",
        "pyyaml",
        "tensorboard",
        "jinja2",
    ],
    extras_require={
        "horovod": ["horovod==0.28.1"],  # built from source by scripts/setup.sh (C++17 fix)
        "dev": ["pytest", "pytest-timeout", "scikit-learn", "scikit-image"],
    },
    entry_points={"console_scripts": ["imagegen = jobs.cli:main"]},
)
