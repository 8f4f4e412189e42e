#!/usr/bin/env bash
# System packages some stages and tests use. Installed where the machine allows it (root or
# passwordless sudo with apt); elsewhere the stages that need them fail with a message that says
# what to install.
set -u
packages=()
# GNU Unifont for the CLIPPO renderer: `unifont` ships the bitmap glyphs as unifont.hex (the
# renderer reads them) and depends on fonts-unifont (the .otf).
[ -e /usr/share/unifont/unifont.hex ] || packages+=(unifont)
[ -e /usr/share/fonts/opentype/unifont/unifont.otf ] || packages+=(fonts-unifont)
# Real clip-art images (about 8,300 PNGs in category folders) for `clipray realdata --set
# openclipart` and the curation tests.
[ -d /usr/share/openclipart/png ] || packages+=(openclipart-png)
[ ${#packages[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = "0" ] || SUDO="sudo -n"
    echo "installing system packages: ${packages[*]}"
    ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}") >/dev/null 2>&1 \
        || echo "warning: could not install ${packages[*]}; the CLIPPO text renderer needs fonts-unifont, \
`clipray realdata --set openclipart` needs openclipart-png"
fi
exit 0
