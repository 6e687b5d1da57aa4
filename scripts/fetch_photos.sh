#!/usr/bin/env bash
# Real photographs for benchmarks and training data, from Debian's wallpaper packages (fetched with
# `apt-get download`, never committed: each package keeps its own licence, see its
# usr/share/doc/*/copyright). Usage: scripts/fetch_photos.sh [DEST]   (default ~/.cache/blurset/photos)
# Writes DEST/<package>/<file> for every JPEG/PNG/WebP photo, and DEST/MANIFEST.tsv
# (package, version, file, sha256). Idempotent: a package already unpacked is left alone.
set -euo pipefail
DEST="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/blurset/photos}"
PACKAGES=(lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds ukui-wallpapers gnome-backgrounds desktop-base plasma-workspace-wallpapers)
mkdir -p "$DEST"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
need_update=1
for pkg in "${PACKAGES[@]}"; do
  [ -f "$DEST/$pkg/.done" ] && continue
  if ! (cd "$work" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
    if [ "$need_update" = 1 ]; then apt-get update -qq >/dev/null 2>&1 || true; need_update=0; fi
    (cd "$work" && apt-get download -qq "$pkg" >/dev/null 2>&1) || { echo "fetch_photos: cannot download $pkg (skipped)" >&2; continue; }
  fi
  deb="$(ls "$work"/"${pkg}"_*.deb | head -1)"
  rm -rf "$work/x" && mkdir -p "$work/x" && dpkg-deb -x "$deb" "$work/x"
  mkdir -p "$DEST/$pkg"
  # photos only: wallpapers and backgrounds folders (not icons, boot-splash themes or logos)
  find "$work/x/usr/share" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' -o -iname '*.webp' \) \
      \( -path '*/backgrounds/*' -o -path '*/wallpapers/*' -o -path '*/wallpaper/*' \) \
      ! -path '*/contents/images*' -exec cp -n {} "$DEST/$pkg/" \;
  # KDE layout (wallpapers/NAME/contents/images/WxH.jpg): the largest file of each, as NAME.jpg
  for d in "$work"/x/usr/share/wallpapers/*/contents/images; do
    [ -d "$d" ] || continue
    f="$(find "$d" -type f \( -iname '*.jpg' -o -iname '*.png' \) -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2)"
    n="$(basename "$(dirname "$(dirname "$d")")")"
    [ -n "$f" ] && cp -n "$f" "$DEST/$pkg/$n.${f##*.}"
  done
  cp -n "$work"/x/usr/share/doc/"$pkg"/copyright "$DEST/$pkg/COPYRIGHT" 2>/dev/null || true
  dpkg-deb -f "$deb" Version > "$DEST/$pkg/.version"
  touch "$DEST/$pkg/.done"
  rm -f "$deb"
done
( cd "$DEST" && for f in */*; do
    case "$f" in */COPYRIGHT) continue;; esac
    printf '%s\t%s\t%s\t%s\n' "${f%%/*}" "$(cat "${f%%/*}/.version")" "${f#*/}" "$(sha256sum "$f" | cut -d' ' -f1)"
  done ) > "$DEST/MANIFEST.tsv"
echo "$DEST: $(wc -l < "$DEST/MANIFEST.tsv") files"
