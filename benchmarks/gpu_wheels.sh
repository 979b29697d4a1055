#!/usr/bin/env bash
# Download, on a machine with a package index, the pure-Python peer packages that
# benchmarks/gpu_check.sh compares against (cospgd for the attacks, imagecorruptions-imaug for the
# corruptions) into .whl/ (git-ignored), for a GPU machine that has torch but no package index:
# carry .whl with the working tree and gpu_check.sh installs them into /tmp/rbseg-site.
# Their own dependencies (torch, numpy, scipy, scikit-image, opencv, numba) must already be there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl "cospgd==0.1.3" "imagecorruptions-imaug==1.1.5" \
  || python3 -m pip download -q --no-deps -d .whl "cospgd==0.1.3" "imagecorruptions-imaug==1.1.5"
ls -la .whl
