#!/usr/bin/env bash
# Install hafailover on this machine (what `./dev install` runs). Safe to run again: an upgrade is
# the same command. It never overwrites the configuration or the cluster key.
#
#   packaging/install.sh [--root DIR] [--no-venv] [--python PYTHON]
#
#   --root DIR   install under DIR instead of / (like DESTDIR): for tests and image builds. The
#                hafailover group is then added to DIR/etc/group (if that file exists) and
#                systemd is not told. A venv is not relocatable, so one built under --root only
#                works when DIR becomes / (a chroot or an image).
#   --no-venv    do not create /opt/hafailover or pip install; use the `hafailover` already on
#                PATH to generate the key. For tests and for packages that bring their own venv.
#   --python P   the interpreter for the venv (default /usr/bin/python3).
#
# What it does, under DIR:
#   /opt/hafailover                      venv with hafailover[systemd] from this source tree
#   /usr/local/bin/hafailover            symlink into the venv, so `hafailover` is on PATH
#   /etc/systemd/system/hafailover.service   the unit (always replaced: customise with drop-ins)
#   /etc/hafailover/hafailover.yaml      the commented example, only if there is none
#   /etc/hafailover/cluster.key          a new key (0600), only if there is none
#   /usr/local/share/doc/hafailover      the docs the unit's Documentation= points at
#   group hafailover                     members may use the control socket without root
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
VENV_WANTED=1
# Debian's interpreter, not whatever `python3` is first on PATH: a venv built on a pyenv or
# /root interpreter would not start under the unit's ProtectHome=yes.
PYTHON=/usr/bin/python3

usage() {
    local code=${1:-2} fd=2
    [ "$code" != 0 ] || fd=1    # --help to stdout, a usage error to stderr
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&"$fd"
    exit "$code"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --no-venv) VENV_WANTED=0; shift ;;
        --python) [ $# -ge 2 ] || usage; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage ;;
    esac
done

# Target paths as the installed system sees them; $R prefixes them for writing.
VENV=/opt/hafailover
BIN_LINK=/usr/local/bin/hafailover
UNIT=/etc/systemd/system/hafailover.service
CONF_DIR=/etc/hafailover
CONFIG=$CONF_DIR/hafailover.yaml
KEY=$CONF_DIR/cluster.key
DOC_DIR=/usr/local/share/doc/hafailover
GROUP=hafailover    # the unit's Group= and the config's default control_group

R=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
[ "$R" != / ] || R=""    # $R prefixes every path written; empty for the real system
if [ -z "$R" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or with --root DIR to install into a directory)" >&2
    exit 1
fi

say() { echo "install: $*"; }

# 1. The package, in its own venv: the daemon's dependencies never clash with Debian's python3-*
#    packages, and an upgrade replaces exactly what the previous install put there.
if [ "$VENV_WANTED" = 1 ]; then
    if [ ! -x "$PYTHON" ]; then
        echo "install.sh: $PYTHON not found: install python3 and python3-venv (./dev install does)" >&2
        exit 1
    fi
    # (Re)create the venv if its interpreter does not run, e.g. after a Debian upgrade replaced
    # the python3 it was built on; --clear drops the stale site-packages.
    if ! "$R$VENV/bin/python" -c '' 2>/dev/null; then
        say "creating venv $R$VENV"
        "$PYTHON" -m venv --clear "$R$VENV"
    fi
    say "installing hafailover[systemd] from $SRC into $R$VENV"
    "$R$VENV/bin/pip" install --quiet --upgrade pip
    # A local directory is always rebuilt and reinstalled, so re-running upgrades the code even
    # when the version number did not change. [systemd] brings the journal handler.
    "$R$VENV/bin/pip" install --quiet --upgrade "$SRC[systemd]"
    HAFAILOVER=$R$VENV/bin/hafailover
else
    HAFAILOVER=$(command -v hafailover || true)
    if [ -z "$HAFAILOVER" ]; then
        echo "install.sh: --no-venv needs a hafailover command on PATH (to generate the key)" >&2
        exit 1
    fi
    say "--no-venv: not touching $R$VENV; using $HAFAILOVER"
fi

# 2. `hafailover` on PATH for operators. The link points at the target path, not at $R: under
#    --root it is meant to resolve once DIR is /.
mkdir -p "$R$(dirname "$BIN_LINK")"
if [ "$(readlink "$R$BIN_LINK" 2>/dev/null || true)" != "$VENV/bin/hafailover" ]; then
    ln -sfn "$VENV/bin/hafailover" "$R$BIN_LINK"
    say "linked $R$BIN_LINK -> $VENV/bin/hafailover"
fi

# 3. The unit is ours and is replaced on every install; local changes belong in drop-ins
#    (systemctl edit hafailover), which survive this.
install -D -m 0644 "$SRC/systemd/hafailover.service" "$R$UNIT"
say "installed $R$UNIT"
install -d -m 0755 "$R$DOC_DIR"
install -m 0644 "$SRC"/docs/*.md "$R$DOC_DIR/"

# 4. Configuration: the example only where there is none. An existing file is the operator's
#    and is never touched, not even to "fix" it.
install -d -m 0755 "$R$CONF_DIR"
if [ -e "$R$CONFIG" ] || [ -L "$R$CONFIG" ]; then
    say "kept existing $R$CONFIG"
else
    install -m 0644 "$SRC/etc/hafailover/hafailover.yaml" "$R$CONFIG"
    say "installed the example config $R$CONFIG: edit it for this cluster"
fi

# 5. The control group. Without it the daemon keeps the socket root-only, and the unit (Group=)
#    does not start at all.
if [ -z "$R" ]; then
    if getent group "$GROUP" >/dev/null; then
        say "group $GROUP exists"
    else
        groupadd --system "$GROUP"
        say "created group $GROUP (add operators with: usermod -aG $GROUP NAME)"
    fi
elif [ -f "$R/etc/group" ]; then
    if grep -q "^$GROUP:" "$R/etc/group"; then
        say "group $GROUP exists in $R/etc/group"
    else
        # --prefix edits DIR/etc/group (and gshadow) without chroot; the host's groups are
        # untouched.
        groupadd --prefix "$R" --system "$GROUP"
        say "created group $GROUP in $R/etc/group"
    fi
else
    say "no $R/etc/group: not creating group $GROUP (create it on the target system)"
fi

# 6. The cluster key: generated only if absent. genkey writes it 0600 in one atomic step, so
#    it is never readable by others, even briefly. Every node needs the SAME key: on all nodes
#    but one, replace the generated file with a copy of the first node's.
if [ -e "$R$KEY" ] || [ -L "$R$KEY" ]; then
    say "kept existing $R$KEY"
else
    "$HAFAILOVER" genkey --out "$R$KEY" >/dev/null
    say "generated $R$KEY (0600): copy this same file to every node of the cluster"
fi

# 7. Tell systemd about the (maybe changed) unit, but only a systemd that is running as PID 1
#    on this system: /run/systemd/system is sd_booted(3)'s test. Never for --root.
if [ -z "$R" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "systemctl daemon-reload done"
else
    say "systemd is not running here (or --root): skipped systemctl daemon-reload"
fi

say "done. Next: edit $CONFIG, copy the same $KEY to every node, then"
say "  hafailover check-config && systemctl enable --now hafailover"
say "An upgrade is the same command; then: systemctl restart hafailover"
