#!/usr/bin/env bash
# Make sure a Docker engine answers, with a data root that can bound each sandbox's disk; start one if we can
# (root on Debian/Ubuntu).
#   bash scripts/ensure-docker.sh                    (what `make docker` runs; idempotent)
#   ROCK_DISK_QUOTA=0 bash scripts/ensure-docker.sh   leave the daemon's storage as it is
# Sandboxes run with --network none, so the daemon needs no bridge and no iptables rules.
#
# Disk quotas: overlay2 on ext4 refuses `--storage-opt size=` and this kernel has no ext4/XFS project quotas, but
# btrfs quotas work. So the daemon runs the `btrfs` storage driver with its data root ROCK_DOCKER_ROOT on the
# host's filesystem and the layers' directory (ROCK_DOCKER_ROOT/btrfs) a btrfs filesystem in a sparse image file
# (ROCK_BTRFS_IMG) mounted from a loop device, with btrfs *simple* quotas, which `rock serve` sets per container
# (only the layers live on the loop: the daemon's and containerd's own files, fsynced on every exec, would wait
# behind a disk bomb's writeback there) (rock/backend/btrfsquota.py says why not full qgroups or --storage-opt). Docker's driver
# decides once, at its first layer removal, whether quotas are on, and would then rescan on every removal (which
# simple quotas refuse): so quotas are off while the daemon starts and removes one layer, and turned on after.
# A running daemon on another storage is switched only when no container runs (restarting dockerd kills them).
# Where btrfs, loop devices or root are missing the daemon is left (or started) as it is, and `rock serve` then
# refuses `disk` with a line saying how to get here.
#
# Another sandbox's exec during a disk bomb (bench/bench_rock_disk.py, measured with D-state stacks): a sandbox at
# its quota makes btrfs commit a transaction on every refused write, each commit's superblock write carries a
# cache flush, and the loop device answers a flush by fsyncing its image file on the host's disk. runc writes an
# exec's pid file with O_SYNC into dockerd's exec root, which on a host whose /run is not a tmpfs is that same
# disk: each exec then waited ~1 s behind the bomb's flushes. So the exec root gets a tmpfs of its own (as /run is
# on most hosts; mounted only while no dockerd runs), and the loop device does direct I/O (the image's writes skip
# the host's page cache: no second copy of the bomb's bytes to write back and fsync; set live, idempotently).
set -euo pipefail

ROCK_DISK_QUOTA="${ROCK_DISK_QUOTA:-1}"
ROCK_DOCKER_ROOT="${ROCK_DOCKER_ROOT:-/var/lib/rock-docker}"
ROCK_BTRFS_IMG="${ROCK_BTRFS_IMG:-/var/lib/rock-docker.btrfs.img}"
ROCK_BTRFS_SIZE_GB="${ROCK_BTRFS_SIZE_GB:-}" # default: 64, at most 80% of the free space where the image lives
LAYERS="$ROCK_DOCKER_ROOT/btrfs"
EXEC_ROOT=/var/run/docker # dockerd's default --exec-root: containerd's and runc's state, the exec FIFOs
LOG=/var/log/rock-dockerd.log
# discard=async: space freed inside (removed sandboxes) is punched out of the sparse image, back to the host, in
# the background (plain `discard` punches inside every transaction commit: a removal then stalled for minutes);
# noatime: reads write no metadata (which the quota would charge)
MOUNT_OPTS=noatime,discard=async
DOCKERD_FLAGS=(--bridge=none --iptables=false --ip6tables=false)
QUOTA=(python3 "$(cd "$(dirname "$0")/.." && pwd)/rock/backend/btrfsquota.py")

answers() { docker info >/dev/null 2>&1; }
driver() { docker info --format '{{.Driver}}' 2>/dev/null || true; }
note() { echo "ensure-docker: $*" >&2; }
quota_mode() { "${QUOTA[@]}" mode "$LAYERS" 2>/dev/null || echo none; }
exec_root_in_memory() { [ "$(findmnt -n -o FSTYPE --target "$EXEC_ROOT" 2>/dev/null)" = tmpfs ]; }

# The loop device under the layers does direct I/O (idempotent; a no-op where the layers are not on a loop).
loop_direct_io() {
  local dev
  dev=$(findmnt -n -o SOURCE "$LAYERS" 2>/dev/null || true)
  case "$dev" in /dev/loop*) ;; *) return 0 ;; esac
  [ "$(cat "/sys/block/${dev#/dev/}/loop/dio" 2>/dev/null)" = 1 ] && return 0
  losetup --direct-io=on "$dev" 2>/dev/null || note "cannot turn on direct I/O for $dev (the image is cached twice)"
}

# Before dockerd starts: its exec root on a tmpfs, unless it is one already (a tmpfs /run).
exec_root_tmpfs() {
  [ "$(id -u)" = 0 ] && ! exec_root_in_memory || return 0
  mkdir -p "$EXEC_ROOT"
  mount -t tmpfs -o mode=0711 rock-docker-exec "$EXEC_ROOT" || note "cannot mount a tmpfs at $EXEC_ROOT"
}

# The btrfs data root, mounted (idempotent); returns 1, saying why, where it cannot be made.
btrfs_root() {
  if mountpoint -q "$ROCK_DOCKER_ROOT" && [ -f "$ROCK_BTRFS_IMG" ] &&
    losetup -j "$ROCK_BTRFS_IMG" | cut -d: -f1 | grep -qxF "$(findmnt -n -o SOURCE "$ROCK_DOCKER_ROOT")"; then
    # an earlier layout had the whole data root on the loop: made anew (images are rebuilt by `make images`)
    pgrep -x dockerd >/dev/null && { note "dockerd runs on the old layout at $ROCK_DOCKER_ROOT"; return 1; }
    umount -R "$ROCK_DOCKER_ROOT" && rm -f "$ROCK_BTRFS_IMG" || return 1
  fi
  # dockerd bind-mounts its data root onto itself unless it is a mount point already, which would hide the loop
  # mounted under it: so the root is made a mount point (a bind onto itself) first
  if ! mountpoint -q "$ROCK_DOCKER_ROOT"; then
    ! mountpoint -q "$LAYERS" || umount "$LAYERS"
    mkdir -p "$ROCK_DOCKER_ROOT"
    mount --bind "$ROCK_DOCKER_ROOT" "$ROCK_DOCKER_ROOT" || { note "cannot bind-mount $ROCK_DOCKER_ROOT"; return 1; }
  fi
  if [ "$(findmnt -n -o FSTYPE --target "$LAYERS" 2>/dev/null)" = btrfs ] && mountpoint -q "$LAYERS"; then
    mount -o "remount,$MOUNT_OPTS" "$LAYERS" 2>/dev/null || true
    loop_direct_io
    return 0
  fi
  if ! command -v mkfs.btrfs >/dev/null 2>&1; then
    note "installing btrfs-progs from Debian ..."
    (export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q btrfs-progs >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q btrfs-progs >/dev/null 2>&1; }) ||
      { note "cannot install btrfs-progs"; return 1; }
  fi
  grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true
  grep -qw btrfs /proc/filesystems || { note "this kernel has no btrfs"; return 1; }
  mkdir -p "$LAYERS" "$(dirname "$ROCK_BTRFS_IMG")"
  if [ ! -s "$ROCK_BTRFS_IMG" ] || ! btrfs inspect-internal dump-super "$ROCK_BTRFS_IMG" >/dev/null 2>&1; then
    local size="$ROCK_BTRFS_SIZE_GB"
    if [ -z "$size" ]; then
      local free_gb
      free_gb=$(($(df --output=avail -k "$(dirname "$ROCK_BTRFS_IMG")" | tail -1) / 1048576))
      size=$((free_gb * 8 / 10))
      [ "$size" -gt 64 ] && size=64
    fi
    [ "$size" -ge 4 ] || { note "only ${size} GB free for a btrfs image"; return 1; }
    note "creating a ${size} GB sparse btrfs image at $ROCK_BTRFS_IMG ..."
    rm -f "$ROCK_BTRFS_IMG"
    truncate -s "${size}G" "$ROCK_BTRFS_IMG"
    mkfs.btrfs -q -f "$ROCK_BTRFS_IMG" >/dev/null || { note "mkfs.btrfs failed"; rm -f "$ROCK_BTRFS_IMG"; return 1; }
  fi
  mount -o "loop,$MOUNT_OPTS" "$ROCK_BTRFS_IMG" "$LAYERS" 2>/dev/null ||
    { note "cannot loop-mount $ROCK_BTRFS_IMG"; return 1; }
  loop_direct_io
}

# With the btrfs daemon up and quotas off: let the driver settle its quota state (one layer made and removed),
# then turn simple quotas on. Without them (kernels before 6.7) rock serve refuses `disk`.
settle_and_enable_squota() {
  local ref=rock/quota-settle:latest
  if ! { tar -cf - -T /dev/null | docker import - "$ref" >/dev/null && docker rmi "$ref" >/dev/null; }; then
    note "could not settle the daemon's quota state; quotas stay off"
    return 0
  fi
  "${QUOTA[@]}" enable-simple "$LAYERS" || note "this kernel has no btrfs simple quotas; rock serve refuses 'disk'"
}

start_dockerd() { # start_dockerd EXTRA_FLAGS...; 0 when it answers within 60 s
  mkdir -p /var/log
  exec_root_tmpfs
  # at niceness 0 even when make runs under `nice`: the daemon's containers inherit it
  # in its own session: a caller whose process group is killed (a CI step, a tool timeout) must not take the
  # daemon and every sandbox with it (seen twice: dockerd SIGKILLed with no shutdown line in its log)
  setsid nohup nice -n "$((-$(nice)))" dockerd "${DOCKERD_FLAGS[@]}" "$@" >>"$LOG" 2>&1 &
  local pid=$!
  for _ in $(seq 1 60); do
    if answers; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1 # it exited (e.g. a storage driver it cannot use)
    sleep 1
  done
  return 1
}

stop_dockerd() { # SIGTERM the daemon(s) we may manage and wait until they are gone
  local pids
  pids=$(pgrep -x dockerd || true)
  [ -n "$pids" ] || return 0
  kill -TERM $pids
  for _ in $(seq 1 60); do
    if ! pgrep -x dockerd >/dev/null; then return 0; fi
    sleep 0.5
  done
  note "dockerd did not stop within 30 s"
  return 1
}

start_with_quota_root() { # the btrfs daemon, else the plain one
  if [ "$ROCK_DISK_QUOTA" != 0 ] && btrfs_root; then
    note "starting dockerd with its layers on btrfs at $LAYERS (per-sandbox disk quotas) ..."
    [ "$(quota_mode)" = disabled ] || "${QUOTA[@]}" disable "$LAYERS" || true
    if start_dockerd --storage-driver=btrfs --data-root="$ROCK_DOCKER_ROOT"; then
      settle_and_enable_squota
      return 0
    fi
    note "dockerd on btrfs did not answer (see $LOG); starting it on its default storage"
    stop_dockerd || true
  fi
  note "starting dockerd (--bridge=none --iptables=false) ..."
  start_dockerd
}

can_manage() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

if answers; then
  [ "$ROCK_DISK_QUOTA" = 0 ] && exit 0
  how="without a btrfs data root with simple quotas, rock serve refuses 'disk' (run 'make docker' as root with no container running)"
  if [ "$(driver)" = btrfs ]; then
    can_manage && loop_direct_io
    mode=$(quota_mode)
    if [ "$mode" = disabled ] && can_manage; then settle_and_enable_squota; mode=$(quota_mode); fi
    case "$mode" in
      squota | disabled)
        exec_root_in_memory && exit 0
        how="dockerd's exec root $EXEC_ROOT is on disk, so a sandbox's disk bomb stalls every exec (run 'make docker' as root with no container running)"
        ;;
    esac # full qgroups (or a root we cannot read): restart below, as for another storage driver
  fi
  if ! can_manage || [ -d /run/systemd/system ]; then note "$how"; exit 0; fi
  running=$(docker ps -q | wc -l)
  if [ "$running" != 0 ]; then note "$running containers are running, not restarting dockerd; $how"; exit 0; fi
  if ! btrfs_root; then note "$how"; exit 0; fi
  note "restarting dockerd on btrfs with simple quotas (no container is running) ..."
  stop_dockerd
  start_with_quota_root && { note "docker engine is up (storage driver: $(driver))"; exit 0; }
  note "error: dockerd did not answer within 60 s; see $LOG"
  exit 1
fi

if ! can_manage; then
  note "error: no Docker engine answers; start one (e.g. 'sudo systemctl start docker') or run 'make docker' as root on Debian/Ubuntu"
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  note "installing docker.io from Debian ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q docker.io >/dev/null
fi

if start_with_quota_root; then note "docker engine is up (storage driver: $(driver))"; exit 0; fi
note "error: dockerd did not answer within 60 s; see $LOG"
exit 1
