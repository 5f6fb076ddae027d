#!/usr/bin/env bash
# Here, before a device run: hspi and the packages the device image lacks, as wheels in .whl/ (git-ignored;
# the run tool carries it).  The image has torch, numpy, pyarrow, typing-extensions and cloudpickle; hspi's
# collection path needs pydantic too.  Versions are this venv's, for CPython 3.12 on x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl .
version() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
for pkg in pydantic pydantic-core annotated-types typing-inspection; do
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg==$(version "$pkg")"
done
ls -l .whl
du -sh .whl
