#!/usr/bin/env bash
# Where the public Fashion-MNIST mirrors are unreachable, install Debian's package
# dataset-fashion-mnist: it puts the canonical .gz files in /usr/share/datasets/fashion-mnist,
# which the Makefile then uses as FASHION_MNIST_MIRROR (the files are verified by SHA-256
# either way). Does nothing when a mirror is already set or installed, or off Debian.
set -euo pipefail
folder=/usr/share/datasets/fashion-mnist
if [ -n "${FASHION_MNIST_MIRROR:-}" ] || [ -f "$folder/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "Not Debian/Ubuntu: Fashion-MNIST will be downloaded (or set FASHION_MNIST_MIRROR)."
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
if ! $sudo apt-get install -y -q dataset-fashion-mnist; then
  $sudo apt-get update -q && $sudo apt-get install -y -q dataset-fashion-mnist || {
    echo "Could not install dataset-fashion-mnist: Fashion-MNIST will be downloaded instead." >&2
    exit 0
  }
fi
echo "Fashion-MNIST mirror: $folder"
