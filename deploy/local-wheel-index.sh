#!/bin/sh
# A package index on loopback holding everything deploy/Dockerfile installs (torch, tuneloop's
# dependencies with EXTRAS, the build backend), for building the image where the container cannot
# reach PyPI or download.pytorch.org itself (no registry mirror, an egress proxy the image does not
# trust). Run from the repository root on a host with CPython 3.11 on x86-64 Linux (the wheels are
# picked for the interpreter that runs this, and the image's is 3.11):
#   deploy/local-wheel-index.sh /path/to/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl &
#   docker build --network host --build-arg PYTHON_IMAGE=tuneloop-base:bookworm \
#     --build-arg TORCH_INDEX=http://127.0.0.1:8765/ --build-arg PIP_INDEX_URL=http://127.0.0.1:8765/ \
#     -f deploy/Dockerfile -t tuneloop:0.1.0 .
# The first argument is a torch wheel file or a requirement (default torch==2.13.0, which from PyPI is
# the CUDA build). Downloads come from the index this host's pip is configured with. The layout is
# PEP 503 (one folder per normalized project name), served by Python's http.server until killed.
set -eu

TORCH=${1:-torch==2.13.0}
PORT=${PORT:-8765}
EXTRAS=${EXTRAS:-postgres}
PYTHON=${PYTHON:-python3}
ROOT=${INDEX_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/tuneloop-wheels.XXXXXX")}

"$PYTHON" -c 'import sys, platform; assert sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64", \
    f"{sys.version.split()[0]} on {platform.machine()}: the image needs wheels for CPython 3.11 on x86_64 (set PYTHON=)"'
mkdir -p "$ROOT/files"
# torch named together with tuneloop, so that the resolver keeps this torch (tuneloop asks torch>=2.4).
"$PYTHON" -m pip download --quiet --dest "$ROOT/files" "$TORCH" ".[$EXTRAS]" "setuptools>=77"
rm -f "$ROOT"/files/tuneloop-*  # the image builds tuneloop from its own copy of src/
"$PYTHON" - "$ROOT" <<'EOF'
import re
import sys
from pathlib import Path

root = Path(sys.argv[1])
for dist in sorted((root / "files").iterdir()):
    if dist.name.endswith(".whl"):
        name = dist.name.split("-")[0]
    else:  # an sdist: NAME-VERSION.tar.gz / .zip
        name = re.sub(r"\.(tar\.gz|zip)$", "", dist.name).rsplit("-", 1)[0]
    page = root / re.sub(r"[-_.]+", "-", name).lower()
    page.mkdir(exist_ok=True)
    if not (page / dist.name).exists():
        (page / dist.name).hardlink_to(dist)
EOF
echo "index of $(ls "$ROOT/files" | wc -l) distributions ($(du -sh "$ROOT/files" | cut -f1)) at http://127.0.0.1:$PORT/ ($ROOT)"
exec "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$ROOT" "$PORT"
