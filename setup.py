"""The one compiled part of rtlake: the validator's element walk (ingest/_dicomwalk.c).

Everything else about the package is in pyproject.toml. The extension is optional: without a C
compiler the install still succeeds and ingest/validate.py uses its own Python walk (slower on
the pull path; `make test` says so). Kept here rather than in pyproject's `ext-modules` table,
which setuptools still calls experimental.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ingest._dicomwalk", ["ingest/_dicomwalk.c"], optional=True,
                             extra_compile_args=["-O2"])])
