#!/usr/bin/env bash
# Builds the reference environment (default .refenv/): open_clip 3.3.0 and its own trainer
# (open_clip_train), with torch 2.14.1 + torchvision 0.29.1. It is kept apart from clipray's
# .venv because PyPI's torchvision does not import beside the CPU torch build that .venv uses.
# Used to regenerate the open_clip goldens under tests/data/ and by `clipray bench peer`.
# Idempotent: an environment that already imports open_clip_train is left as it is.
set -euo pipefail
DIR=${1:-.refenv}
PYTHON=${PYTHON:-python3}
if [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -c "import open_clip_train.main, torchvision" 2>/dev/null; then
    exit 0
fi
echo "building the open_clip reference environment in $DIR (torch 2.14.1, torchvision 0.29.1, open_clip 3.3.0)"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 \
    braceexpand webdataset pandas 2>&1 | grep -v "^WARNING: Location" || true
"$DIR/bin/python" -c "import open_clip_train.main, torchvision"
