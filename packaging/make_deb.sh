#!/usr/bin/env bash
# Wrap the one-folder bundle in a .deb, offline, with dpkg-deb.
#
#   packaging/make_deb.sh BUNDLE_DIR VERSION ARCH OUT.deb
#
# Installs:
#   /opt/dcp-desktop/                                 the bundle
#   /usr/bin/dcp-desktop, /usr/bin/dcp-chat           links into it
#   /usr/share/applications/dcp-desktop.desktop       the menu entry
#   /usr/share/icons/hicolor/{48x48,256x256}/apps/dcp-desktop.png
# DEB_COMPRESSION=gzip (or zstd) builds faster than the default xz and makes a larger .deb.
# Depends: the system libraries the bundle's binaries load but PyInstaller leaves to the system
# (glibc, X11/xcb, GL, fontconfig, ...), found with ldd and named with dpkg -S on this machine.
set -euo pipefail
BUNDLE="$1" VERSION="$2" ARCH="$3" OUT="$4"
HERE="$(cd "$(dirname "$0")" && pwd)"
STAGE="$(dirname "$OUT")/deb-root"
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications"

cp -a "$BUNDLE" "$STAGE/opt/dcp-desktop"
ln -s /opt/dcp-desktop/dcp-desktop "$STAGE/usr/bin/dcp-desktop"
ln -s /opt/dcp-desktop/dcp-chat "$STAGE/usr/bin/dcp-chat"
install -m 644 "$HERE/linux/dcp-desktop.desktop" "$STAGE/usr/share/applications/"
for size in 48 256; do
  mkdir -p "$STAGE/usr/share/icons/hicolor/${size}x${size}/apps"
  install -m 644 "$HERE/icon/dcp-desktop-$size.png" "$STAGE/usr/share/icons/hicolor/${size}x${size}/apps/dcp-desktop.png"
done

# System libraries the bundle needs, as packages: every ELF file's dependencies that resolve outside
# it (ldd), named with dpkg -S; libc6 at least the newest GLIBC_ symbol version any file asks for;
# and Qt's X11 plugin's libraries, which PyInstaller cannot bundle where they are not installed
# (linux/depends.txt: they must be on the user's system either way).
elf_files="$STAGE/elf-files"
find "$STAGE/opt/dcp-desktop" -type f \( -name '*.so*' -o -perm -u+x \) -print0 |
  xargs -0 file -N -0 | tr '\0' '\t' | awk -F'\t' '/ELF/ {print $1}' > "$elf_files"
glibc="$(xargs -d '\n' readelf -V < "$elf_files" 2>/dev/null | grep -o 'Name: GLIBC_[0-9.]*' |
         sed 's/.*GLIBC_//' | sort -uV | tail -1)"
depends="$(
  set +o pipefail
  xargs -d '\n' ldd < "$elf_files" 2>/dev/null | awk '/=> \// {print $3}' | grep -v "^$STAGE" | sort -u |
    xargs -r dpkg -S 2>/dev/null | cut -d: -f1 | sort -u | grep -vx libc6
  echo "libc6 (>= $glibc)"
  grep -v '^#' "$HERE/linux/depends.txt"
)"
rm "$elf_files"
depends="$(echo "$depends" | sort -u | grep . | paste -sd, | sed 's/,/, /g')"
installed_kib="$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)"
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$installed_kib/" \
    -e "s/@DEPENDS@/$depends/" "$HERE/linux/control.in" > "$STAGE/DEBIAN/control"
echo "Depends: $depends"

nice -n "${NICE:-10}" dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$STAGE" "$OUT"
rm -rf "$STAGE"
