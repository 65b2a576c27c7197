#!/usr/bin/env bash
# A real container engine for the docker backend's integration tests, without Docker Hub:
# Debian's podman serving the Docker API on a unix socket, and the sandbox image built from a Debian
# root filesystem that debootstrap makes from the Debian mirror apt already uses.
#
#   deploy/podman-ci.sh           # = setup images start; prints the DOCKER_HOST to export
#   deploy/podman-ci.sh setup     # apt-get install podman catatonit debootstrap; containers.conf
#   deploy/podman-ci.sh images    # mathcoder-base:bookworm (debootstrap), mathcoder-sandbox:latest
#   deploy/podman-ci.sh start     # podman system service on $SOCKET (idempotent)
#   deploy/podman-ci.sh stop      # stops the service this script started
#   deploy/podman-ci.sh check     # exit 0 when the engine answers and the image is there
#
# Needs root and apt (Debian bookworm). Each step is idempotent: images already built are kept
# (FORCE=1 rebuilds). Measured on a 2-core Debian 12 VM: setup ~2 min, base ~5 min, sandbox ~8 min
# (mostly downloads), start ~3 s.
set -euo pipefail

SOCKET=${SOCKET:-/run/podman/podman.sock}
PIDFILE=${PIDFILE:-/run/podman/mathcoder-service.pid}
BASE_IMAGE=${BASE_IMAGE:-localhost/mathcoder-base:bookworm}
SANDBOX_IMAGE=${SANDBOX_IMAGE:-mathcoder-sandbox:latest}
SUITE=${SUITE:-bookworm}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[podman-ci] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mirror() {
  # The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org.
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
          /etc/apt/sources.list 2>/dev/null | grep -v security | head -n1 |
        sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//')
  echo "${uri:-http://deb.debian.org/debian}"
}

setup() {
  [ -z "${SETUP_DONE:-}" ] || return 0
  SETUP_DONE=1
  [ "$(id -u)" = 0 ] || die "needs root (apt-get, root podman)"
  command -v apt-get >/dev/null || die "needs apt-get (a Debian or Ubuntu host)"
  if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || [ ! -x /usr/bin/catatonit ]; then
    log "installing podman, catatonit (the containers' init) and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman catatonit debootstrap >/dev/null
  fi
  # Where the host's bounding set lacks CAP_SYS_RESOURCE (some VMs and containers), root podman
  # cannot raise a container's RLIMIT_NOFILE/NPROC to its defaults (1048576): every `podman run`
  # fails with "error setting rlimit type 7: operation not permitted". Default them to what the
  # host allows instead (podman 4.3 lowers its own RLIMIT_NPROC to 32768 at start).
  local bnd
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  if (( (16#$bnd >> 24 & 1) == 0 )); then
    local nofile nproc
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
    [ "$nofile" = unlimited ] && nofile=1048576
    mkdir -p /etc/containers/containers.conf.d
    cat > /etc/containers/containers.conf.d/50-mathcoder-ulimits.conf <<EOF
# Written by deploy/podman-ci.sh: this host denies CAP_SYS_RESOURCE (bounding set $bnd).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
EOF
    log "no CAP_SYS_RESOURCE here: default ulimits nofile=$nofile nproc=$nproc"
  fi
  # A hybrid cgroup host (v1 controllers, plus a v2 hierarchy holding a controller of its own, e.g.
  # hugetlb) makes crun 1.8 refuse every container ("cgroups in hybrid mode not supported, drop all
  # controllers from cgroupv2"); runc runs there and still enforces the v1 memory and pids limits.
  local unified=/sys/fs/cgroup/unified/cgroup.controllers
  if [ -r "$unified" ] && [ -n "$(tr -d '[:space:]' < "$unified")" ]; then
    command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
    mkdir -p /etc/containers/containers.conf.d
    printf '%s\n' "# Written by deploy/podman-ci.sh: hybrid cgroups with v2 controllers; crun refuses them." \
      '[engine]' 'runtime = "runc"' > /etc/containers/containers.conf.d/60-mathcoder-runtime.conf
    log "hybrid cgroups with v2 controllers ($(tr '\n' ' ' < "$unified")): OCI runtime runc"
  fi
}

images() {
  setup
  if [ -n "${FORCE:-}" ] || ! podman image exists "$BASE_IMAGE"; then
    local dir
    dir=$(mktemp -d /var/tmp/mathcoder-rootfs.XXXXXX)
    log "debootstrap $SUITE from $(mirror) (minbase, python3)"
    debootstrap --variant=minbase --include=python3 "$SUITE" "$dir" "$(mirror)" >/dev/null
    tar -C "$dir" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$dir"
  fi
  if [ -n "${FORCE:-}" ] || ! podman image exists "$SANDBOX_IMAGE"; then
    log "building $SANDBOX_IMAGE (Dockerfile, target sandbox) from $BASE_IMAGE"
    local secret=()
    # pip in the build trusts what this host trusts (a TLS-intercepting proxy's CA included).
    [ -s /etc/ssl/certs/ca-certificates.crt ] && secret=(--secret "id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt")
    podman build --quiet --format docker --target sandbox --build-arg SANDBOX_BASE="$BASE_IMAGE" \
      "${secret[@]}" -t "$SANDBOX_IMAGE" "$ROOT" >/dev/null
  fi
  podman run --rm --network none "$SANDBOX_IMAGE" python -c "import ipykernel, numpy, scipy, sympy" \
    || die "the sandbox image does not run"
}

start() {
  setup
  if check_engine; then log "already serving on unix://$SOCKET"; return; fi
  mkdir -p "$(dirname "$SOCKET")"
  rm -f "$SOCKET"
  # From its own folder: conmon writes an `oom` file into its working directory after an OOM kill
  # (podman 4.3, cgroup v1), which would otherwise be wherever this script was started.
  (
    cd "$(dirname "$SOCKET")"
    nohup podman system service --time=0 "unix://$SOCKET" </dev/null >/var/log/mathcoder-podman.log 2>&1 &
    echo $! > "$PIDFILE"
  )
  for _ in $(seq 50); do check_engine && { log "serving on unix://$SOCKET"; return; }; sleep 0.2; done
  die "podman system service did not answer on $SOCKET (see /var/log/mathcoder-podman.log)"
}

stop() {
  if [ -s "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
}

check_engine() {
  [ -S "$SOCKET" ] && podman --url "unix://$SOCKET" version >/dev/null 2>&1
}

case "${1:-all}" in
  setup) setup ;;
  images) images ;;
  start) start ;;
  stop) stop ;;
  check) check_engine && podman image exists "$SANDBOX_IMAGE" ;;
  all) images; start; echo "export DOCKER_HOST=unix://$SOCKET" ;;
  *) die "unknown step ${1}: setup, images, start, stop, check or all" ;;
esac
