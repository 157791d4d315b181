"""The package list (everything else is in pyproject.toml).

``find_packages`` picks up every package under ``spulctl/`` (a new subpackage cannot be left out of the wheel);
the repository's ``kernels/`` folder is added as ``spulctl.kernels`` (``[tool.setuptools.package-dir]`` maps it).
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["spulctl", "spulctl.*"]), "spulctl.kernels"])
