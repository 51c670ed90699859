"""Install the repository's top-level folders under one namespace, ``outpost``.

The folders keep their place at the root (the layout is part of the project's contract); the
wheel maps each to ``outpost.<folder>``, so site-packages gains one top-level name only.
Subpackages are found at build time, so a new one needs no edit here.
"""

from setuptools import find_namespace_packages, setup

TOP_LEVEL = ("agent", "drivers", "fsm", "buffer", "cloud", "point_schedules")

packages = [
    f"outpost.{pkg}"
    for top in TOP_LEVEL
    for pkg in find_namespace_packages(include=[top, f"{top}.*"], exclude=["*__pycache__*"])
]
setup(packages=packages, package_dir={f"outpost.{top}": top for top in TOP_LEVEL})
