#!/usr/bin/env bash
# Fetch and unpack the colour emoji images that `--dataset emoji` reads (npm registry, ~135 MB download).
#   bash scripts/fetch_emoji.sh [DIR]     (default: data/emoji; then train with --data-dir data, or DDPM_EMOJI_DIR=DIR)
# Licences: Twemoji graphics CC-BY 4.0 (Twitter, Inc. and other contributors), Noto Emoji Apache-2.0 (Google).
set -euo pipefail
dir="${1:-data/emoji}"
command -v npm >/dev/null || { echo "error: npm is needed (e.g. apt-get install npm)" >&2; exit 1; }
mkdir -p "$dir"
for set in twitter google; do
  pkg="emoji-datasource-$set"
  if [ -f "$dir/$pkg/emoji.json" ]; then echo "$dir/$pkg: already there"; continue; fi
  tgz=$(cd "$dir" && npm pack --silent "$pkg@16.0.0" | tail -n 1)
  mkdir -p "$dir/$pkg"
  tar xzf "$dir/$tgz" -C "$dir/$pkg" --strip-components 1 package/emoji.json package/LICENSE package/README.md \
    "package/img/$set/64"
  rm -f "$dir/$tgz"
  echo "$dir/$pkg: $(ls "$dir/$pkg/img/$set/64" | wc -l) images"
done
