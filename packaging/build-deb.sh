#!/usr/bin/env bash
# Build hafailover_<version>_<arch>.deb from this checkout (what `./dev deb` runs).
#
#   packaging/build-deb.sh [--out DIR] [--version VERSION]
#
#   --out DIR          where the .deb goes (default: build/ in the checkout)
#   --version VERSION  the package version (default: `version` in setup.cfg)
#
# The package is self-contained in the manner of dh-virtualenv: a virtualenv at /opt/hafailover
# built on Debian's /usr/bin/python3, holding hafailover[systemd] and its dependencies from PyPI
# wheels (systemd-python is compiled here against libsystemd). Debian's python3-* packages do
# not fit: bookworm has pydantic 1 (the code needs 2) and pyroute2 0.7 (no AsyncIPRoute). The
# package depends only on Debian packages: python3 (3.11, the venv's interpreter), libsystemd0
# and libc6 (the compiled extensions), systemd (systemctl, systemd-sysusers) and procps
# (ExecReload's /bin/kill).
#
# Needs (./dev deb installs them): python3-venv python3-dev gcc pkg-config libsystemd-dev
# dpkg-dev, and PyPI reachable. Prints the path of the .deb (progress goes to stderr).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$SRC/build
VERSION=""
PYTHON=/usr/bin/python3
PREFIX=/opt/hafailover

usage() {
    local code=${1:-2} fd=2
    [ "$code" != 0 ] || fd=1
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&"$fd"
    exit "$code"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
        --version) [ $# -ge 2 ] || usage; VERSION=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "build-deb.sh: unknown option $1" >&2; usage ;;
    esac
done

[ -n "$VERSION" ] || VERSION=$(sed -n 's/^version *= *//p' "$SRC/setup.cfg")
if ! [[ $VERSION =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
    echo "build-deb.sh: bad version '$VERSION'" >&2
    exit 2
fi
ARCH=$(dpkg --print-architecture)
say() { echo "build-deb: $*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hafailover-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE=$WORK/root
VENV=$STAGE$PREFIX

# 1. The runtime: a venv built where it will not live, then moved in name only (below).
say "venv $PREFIX on $("$PYTHON" --version) (Debian's interpreter)"
"$PYTHON" -m venv "$VENV"
# The wheel is built from a copy, so the checkout gets no build/ or egg-info from it.
mkdir "$WORK/src"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.hypothesis \
    -cf - . | tar -C "$WORK/src" -xf -
# Its own wheel cache: a wheel another interpreter built (pip caches by tag alone) may carry
# that interpreter's RUNPATH.
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input --quiet
     --cache-dir "${XDG_CACHE_HOME:-$HOME/.cache}/hafailover-deb/pip")
"${PIP[@]}" install --no-compile "$WORK/src[systemd]"
# A packaged runtime installs nothing later: pip and setuptools would only be attack surface
# and megabytes.
"${PIP[@]}" uninstall --yes pip setuptools
# Only the hafailover command: the libraries' own scripts (scapy, pyroute2's tools) are not
# part of this package.
find "$VENV/bin" -maxdepth 1 -type f ! -name hafailover -delete
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
# Where the wheel came from (a temporary directory here) is no business of the installed system.
for f in "$VENV"/lib/python3*/site-packages/hafailover-*.dist-info/direct_url.json; do
    [ -e "$f" ] || continue
    rm "$f"
    sed -i '/direct_url\.json/d' "$(dirname "$f")/RECORD"
done
# Rewrite the build path to the installed one (console-script shebangs, RECORD files).
grep -rlIF "$VENV" "$VENV" | while read -r f; do sed -i "s|$VENV|$PREFIX|g" "$f"; done
if grep -rqF "$WORK" "$VENV"; then
    echo "build-deb.sh: the build path is still in: $(grep -rlF "$WORK" "$VENV" | head -3)" >&2
    exit 1
fi
# Debug symbols of the compiled extensions are not shipped.
find "$VENV" -name '*.so' -type f -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} +
# Byte-code, shipped: the sandboxed daemon cannot write __pycache__ (ProtectSystem=strict) and
# would otherwise compile every module at every start; compiling in postinst instead makes the
# install several times slower. Paths in it are the installed ones; dpkg keeps the sources'
# mtimes, which the byte-code is checked against.
"$VENV/bin/python" -m compileall -q -j 0 -s "$STAGE" -p / "$VENV/lib" >/dev/null
# Wheels install files 0664 on some pips and may leave odd modes: normalise.
find "$VENV" -type d -exec chmod 0755 {} +
find "$VENV" -type f -exec chmod go-w {} +

# 2. The rest of the file system.
install -d "$STAGE/usr/bin"
ln -s "$PREFIX/bin/hafailover" "$STAGE/usr/bin/hafailover"
install -D -m 0644 "$SRC/systemd/hafailover.service" "$STAGE/lib/systemd/system/hafailover.service"
install -D -m 0644 "$SRC/packaging/sysusers.conf" "$STAGE/usr/lib/sysusers.d/hafailover.conf"
install -D -m 0644 "$SRC/etc/hafailover/hafailover.yaml" "$STAGE/etc/hafailover/hafailover.yaml"
DOC=$STAGE/usr/share/doc/hafailover
install -d "$DOC"
install -m 0644 "$SRC/README.md" "$SRC"/docs/*.md "$DOC/"
install -m 0644 "$SRC/packaging/debian/copyright" "$DOC/copyright"
{
    echo "hafailover ($VERSION) unstable; urgency=medium"
    echo
    echo "  * Built from the hafailover source tree (see README.md)."
    echo
    # A fixed date keeps rebuilds of one version identical.
    echo " -- hafailover developers <hafailover@users.noreply.github.com>  Thu, 01 Jan 2026 00:00:00 +0000"
} | gzip -9n > "$DOC/changelog.gz"
install -D -m 0644 "$SRC/packaging/debian/lintian-overrides" \
    "$STAGE/usr/share/lintian/overrides/hafailover"

# 3. Control data.
install -d "$STAGE/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$SRC/packaging/debian/$script" "$STAGE/DEBIAN/$script"
done
install -m 0644 "$SRC/packaging/debian/conffiles" "$STAGE/DEBIAN/conffiles"
# Shared-library dependencies of the compiled extensions, as dpkg-shlibdeps works them out.
mkdir -p "$WORK/shlibs/debian"
printf 'Source: hafailover\n\nPackage: hafailover\nArchitecture: any\n' > "$WORK/shlibs/debian/control"
mapfile -t SOS < <(find "$VENV" -name '*.so' -type f)
SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O --ignore-missing-info "${SOS[@]}" 2>/dev/null \
         | sed -n 's/^shlibs:Depends=//p')
if [ -z "$SHLIBS" ]; then
    echo "build-deb.sh: dpkg-shlibdeps found no library dependencies for: ${SOS[*]}" >&2
    exit 1
fi
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@SIZE@|$INSTALLED_SIZE|" \
    -e "s|@SHLIBS@|$SHLIBS|" "$SRC/packaging/debian/control.in" > "$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) > "$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums"

mkdir -p "$OUT"
DEB=$OUT/hafailover_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
say "$(du -h "$DEB" | cut -f1) packed, ${INSTALLED_SIZE} KiB installed"
echo "$DEB"
