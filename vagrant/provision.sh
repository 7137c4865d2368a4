#!/usr/bin/env bash
# Provision one VM of the Vagrant lab (the Vagrantfile runs it as root from the synced repository,
# /hafailover). Safe to run again (`vagrant provision`): it reinstalls and restarts.
#
#   vagrant/provision.sh [--node NAME] [--key FILE] [--root DIR --dry-run]
#
#   --node NAME  this VM's node name in vagrant/hafailover.yaml (default: the short hostname)
#   --key FILE   the shared cluster key (default: vagrant/.cluster.key, made by the Vagrantfile)
#   --deb FILE   the hafailover package to install (default: the newest build/hafailover_*.deb
#                in the repository, built on the host with ./dev deb; if there is none, the VM
#                builds it with ./dev deb)
#   --dry-run    only write the files (config, key, nginx site and page); no apt, no
#                package build, no systemctl. What would run is printed instead.
#   --root DIR   write the files under DIR instead of / (only with --dry-run): lets a test check
#                the result without touching this machine.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
NODE=""
KEY_SRC=$HERE/.cluster.key
ROOT=/
DRY_RUN=0
DEB=""

usage() {
    local code=${1:-2} fd=2
    [ "$code" != 0 ] || fd=1    # --help to stdout, a usage error to stderr
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&"$fd"
    exit "$code"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --node) [ $# -ge 2 ] || usage; NODE=$2; shift 2 ;;
        --key) [ $# -ge 2 ] || usage; KEY_SRC=$2; shift 2 ;;
        --deb) [ $# -ge 2 ] || usage; DEB=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "provision.sh: unknown option $1" >&2; usage ;;
    esac
done

# apt and systemctl always act on this machine, so a root other than / only makes sense when
# nothing is run.
R=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
[ "$R" != / ] || R=""    # $R prefixes every path written; empty for the real system
if [ -n "$R" ] && [ "$DRY_RUN" = 0 ]; then
    echo "provision.sh: --root needs --dry-run (apt and systemctl cannot act on a directory)" >&2
    exit 2
fi
[ -n "$NODE" ] || NODE=$(hostname -s)

CONFIG_SRC=$HERE/hafailover.yaml
SITE=hafailover-lab
WWW=/var/www/$SITE

say() { echo "provision[$NODE]: $*"; }
# Runs a command, or in --dry-run only shows it.
run() {
    if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; else "$@"; fi
}

# Fail before changing anything if this VM is not in the lab's config: the daemon would refuse
# to start later with a less obvious message.
if ! grep -Fq "{name: $NODE," "$CONFIG_SRC"; then
    echo "provision.sh: node '$NODE' is not in $CONFIG_SRC (pass --node NAME)" >&2
    exit 1
fi
if [ ! -s "$KEY_SRC" ]; then
    echo "provision.sh: no cluster key at $KEY_SRC: the Vagrantfile creates it on the host" \
         "(run vagrant from the vagrant/ directory), or pass --key FILE" >&2
    exit 1
fi

# 1. Packages: nginx serves the page and /healthz; curl for the walkthrough.
if [ "$DRY_RUN" = 0 ]; then
    # The VIP's interface must exist: a box that names its second NIC differently (enp0s8)
    # would otherwise only fail later, in check-config.
    if ! ip link show eth1 >/dev/null 2>&1; then
        echo "provision.sh: no eth1 (the VIP's interface in $CONFIG_SRC); interfaces:" >&2
        ip -br link >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nginx curl >/dev/null
else
    say "would run: apt-get install nginx curl"
fi

# 2. hafailover from its Debian package, as on any server: apt pulls its Debian dependencies.
#    Installed before the config and key exist, the service is enabled but not started (its
#    ConditionPathExists); a re-provision upgrades or reinstalls it. --force-confold keeps the
#    lab's config (written below) when the package's example changes.
if [ -z "$DEB" ]; then
    DEB=$(ls -t "$SRC"/build/hafailover_*.deb 2>/dev/null | head -n 1 || true)
fi
if [ -z "$DEB" ]; then
    if [ "$DRY_RUN" = 1 ]; then
        say "would run: $SRC/dev deb"
        DEB="$SRC/build/hafailover_VERSION_amd64.deb"
    else
        DEB=$("$SRC/dev" deb)
    fi
fi
run apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    --reinstall "$DEB"

# 3. The shared key and the lab's config, always replaced: in the lab both belong to the
#    repository (an edited vagrant/hafailover.yaml is picked up by `vagrant provision`).
install -d -m 0755 "$R/etc/hafailover"
install -m 0600 "$KEY_SRC" "$R/etc/hafailover/cluster.key"
install -m 0644 "$CONFIG_SRC" "$R/etc/hafailover/hafailover.yaml"
say "installed $R/etc/hafailover/hafailover.yaml and cluster.key (0600)"

# 4. nginx: a page naming the node that answered (so `curl VIP` shows who holds it) and the
#    /healthz the http check probes. Debian's default site also claims default_server: remove it.
install -d -m 0755 "$R/etc/nginx/sites-available" "$R/etc/nginx/sites-enabled" "$R$WWW"
cat > "$R/etc/nginx/sites-available/$SITE" <<EOF
# Written by vagrant/provision.sh for the hafailover lab.
server {
    listen 80 default_server;
    listen [::]:80 default_server;
    root $WWW;
    index index.html;

    location = /healthz {
        access_log off;
        default_type text/plain;
        return 200 "ok\n";
    }
}
EOF
ln -sfn "/etc/nginx/sites-available/$SITE" "$R/etc/nginx/sites-enabled/$SITE"
rm -f "$R/etc/nginx/sites-enabled/default"
printf 'hafailover lab: this page was served by %s\n' "$NODE" > "$R$WWW/index.html"
chmod 0644 "$R$WWW/index.html"
say "installed the nginx site $SITE"

# 5. Check the config on this host (node found by hostname, eth1 carries the VIP's subnet, key
#    mode) before starting, so a mistake shows here and not as a restart loop.
run hafailover check-config -c /etc/hafailover/hafailover.yaml
run nginx -t -q
run systemctl enable --quiet nginx
run systemctl reload-or-restart nginx
# restart, not start: a re-provision must pick up new code and config.
run systemctl enable --quiet hafailover
run systemctl restart hafailover

say "done: 'sudo hafailover status' on any node; 'curl http://192.168.56.100/' from the host"
