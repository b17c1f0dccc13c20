#!/usr/bin/env bash
# launch.sh: turn this machine into a builder in one command. It prepares the cache disk, starts cachesvc and a
# BuildKit engine (buildkitd, or Docker Engine with its embedded BuildKit) that exports its cache to cachesvc,
# then prints the cache flags a CI job passes.
#
# Run it at boot (cloud-init runs it on every boot) or by hand. Running it again changes nothing.
# `launch.sh --help` lists the options. The "Running a builder" section of README.md covers the whole setup.
set -Eeuo pipefail
shopt -u patsub_replacement 2>/dev/null || true # bash >= 5.2: keep "&" literal in ${var//pattern/replacement}

PROG=launch.sh
SELF_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
FS_LABEL=cachesvc # <= 12 characters: xfs labels are that short
SAFE_PATH_RE='^/[A-Za-z0-9_./@:+-]*$'

# ------------------------------------------------------------------------------------------------------------
# defaults (each one has a flag; see usage)

DEVICE=""
ROOT=/var/lib/builder
FS=ext4
CACHE_SHARE=0.5
MIN_FREE=10%
ENGINE=buildkitd
ENGINE_BIN=""
ENGINE_ADDRS=()
ENGINE_TLS_DIR=""
ENGINE_ARGS=()
CACHESVC_BIN=""
CACHESVC_LISTEN=127.0.0.1:5000
RUN_DIR=/run/cachesvc-builder
UNITS_DIR=""
SYSTEMD_DIR=/etc/systemd/system
TIMEOUT=120
CI_REPO="<repo>"
CI_BRANCH="<branch>"
CI_DEFAULT_BRANCH=main
FOREGROUND=0
USE_SYSTEMD=auto
ACTION=launch
RENDER_DIR=""

usage() {
	cat <<'EOF'
Usage: launch.sh [OPTIONS]

Prepare the cache disk, start cachesvc and a BuildKit engine, print the CI cache flags. Idempotent.

Disk
  --device DEV          the cache disk (default: the one unmounted NVMe disk without partitions, preferring one
                        labelled "cachesvc", then AWS instance storage); "none": use --root as it is (a volume)
  --root DIR            where the disk is mounted (default /var/lib/builder)
  --fs ext4|xfs         filesystem created on a blank disk (default ext4); a disk with data is never formatted
  --cache-share F       fraction of the disk for cachesvc's budget (default 0.5)
  --min-free SIZE|PCT   free space kept on the disk by cachesvc and the engine's GC alike (default 10%)

cachesvc
  --cachesvc-bin PATH   the cachesvc command (default: cachesvc on PATH)
  --cachesvc-listen H:P address cachesvc serves on (default 127.0.0.1:5000)

Engine
  --engine buildkitd|dockerd   (default buildkitd)
  --engine-bin PATH     the engine's binary (default: buildkitd or dockerd on PATH)
  --engine-addr ADDR    an address the engine listens on, repeatable (default unix:///run/buildkit/buildkitd.sock
                        or unix:///var/run/docker.sock); add tcp://0.0.0.0:1234 for remote CI clients
  --engine-tls-dir DIR  ca.pem, cert.pem and key.pem securing the engine's tcp:// addresses
  --engine-arg ARG      extra engine flag, repeatable (e.g. --engine-arg=--bridge=none)

Running
  --foreground          run cachesvc and the engine under this script until SIGTERM/SIGINT (containers)
  --no-systemd          start plain background processes even when systemd is PID 1
  --systemd             install and start the units even when systemd is not detected as PID 1
  --run-dir DIR         pid files, state and the engine's runtime files (default /run/cachesvc-builder)
  --timeout SECONDS     how long to wait for each service to become ready (default 120)
  --units-dir DIR       where the unit templates are (default: systemd/ next to this script)
  --systemd-dir DIR     where units are installed (default /etc/systemd/system)

CI flags (printed at the end)
  --ci-repo NAME  --ci-branch NAME  --ci-default-branch NAME (default main)

Other actions
  --stop                stop what a previous run started (the disk stays mounted)
  --check               exit 0 if cachesvc and the engine answer, 1 if not (a health check)
  --print-device        print the cache disk that would be used, and exit
  --render-units DIR    write the systemd units as they would be installed into DIR, and exit
  -h, --help            this text
EOF
}

# ------------------------------------------------------------------------------------------------------------
# messages

# Errors are one line on stderr. A `die` inside a command substitution exits that subshell with REPORTED, which
# tells the enclosing shell that the message is out already.
REPORTED=3
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	if ((BASH_SUBSHELL > 0)); then exit "$REPORTED"; fi
	exit 1
}
usage_error() {
	printf '%s: error: %s (see --help)\n' "$PROG" "$*" >&2
	if ((BASH_SUBSHELL > 0)); then exit "$REPORTED"; fi
	exit 2
}
on_error() { # STATUS LINE COMMAND
	if [[ $1 -ne $REPORTED ]]; then
		printf '%s: error: unexpected failure (line %s, status %s): %s\n' "$PROG" "$2" "$1" "$3" >&2
	fi
	if ((BASH_SUBSHELL > 0)); then exit "$REPORTED"; fi
	exit 1
}
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR

# ------------------------------------------------------------------------------------------------------------
# arguments

need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }

parse_args() {
	while [[ $# -gt 0 ]]; do
		local opt=$1
		if [[ $opt == --*=* ]]; then
			set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
			opt=$1
		fi
		case $opt in
		-h | --help) usage; exit 0 ;;
		--device) need_value "$@"; DEVICE=$2; shift ;;
		--root) need_value "$@"; ROOT=$2; shift ;;
		--fs) need_value "$@"; FS=$2; shift ;;
		--cache-share) need_value "$@"; CACHE_SHARE=$2; shift ;;
		--min-free) need_value "$@"; MIN_FREE=$2; shift ;;
		--engine) need_value "$@"; ENGINE=$2; shift ;;
		--engine-bin) need_value "$@"; ENGINE_BIN=$2; shift ;;
		--engine-addr) need_value "$@"; ENGINE_ADDRS+=("$2"); shift ;;
		--engine-tls-dir) need_value "$@"; ENGINE_TLS_DIR=$2; shift ;;
		--engine-arg) need_value "$@"; ENGINE_ARGS+=("$2"); shift ;;
		--cachesvc-bin) need_value "$@"; CACHESVC_BIN=$2; shift ;;
		--cachesvc-listen) need_value "$@"; CACHESVC_LISTEN=$2; shift ;;
		--run-dir) need_value "$@"; RUN_DIR=$2; shift ;;
		--units-dir) need_value "$@"; UNITS_DIR=$2; shift ;;
		--systemd-dir) need_value "$@"; SYSTEMD_DIR=$2; shift ;;
		--timeout) need_value "$@"; TIMEOUT=$2; shift ;;
		--ci-repo) need_value "$@"; CI_REPO=$2; shift ;;
		--ci-branch) need_value "$@"; CI_BRANCH=$2; shift ;;
		--ci-default-branch) need_value "$@"; CI_DEFAULT_BRANCH=$2; shift ;;
		--foreground) FOREGROUND=1 ;;
		--no-systemd) USE_SYSTEMD=no ;;
		--systemd) USE_SYSTEMD=yes ;;
		--stop) ACTION=stop ;;
		--check) ACTION=check ;;
		--print-device) ACTION=print-device ;;
		--render-units) need_value "$@"; ACTION=render-units; RENDER_DIR=$2; shift ;;
		*) usage_error "unknown option: $opt" ;;
		esac
		shift
	done
}

safe_path() { # NAME VALUE: absolute and free of characters that would need quoting in TOML, JSON or units
	[[ $2 =~ $SAFE_PATH_RE ]] || usage_error "$1 must be an absolute path of letters, digits and ._/@:+- (got '$2')"
}

validate_args() {
	[[ $ENGINE == buildkitd || $ENGINE == dockerd ]] || usage_error "--engine must be buildkitd or dockerd"
	[[ $FS == ext4 || $FS == xfs ]] || usage_error "--fs must be ext4 or xfs"
	if ! [[ $CACHE_SHARE =~ ^(0?\.[0-9]+|0|1|1\.0*)$ ]] || ! awk -v f="$CACHE_SHARE" 'BEGIN { exit !(f > 0 && f < 1) }'; then
		usage_error "--cache-share must be a fraction between 0 and 1 (got '$CACHE_SHARE')"
	fi
	if [[ $MIN_FREE == *% ]]; then
		if ! [[ ${MIN_FREE%\%} =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v p="${MIN_FREE%\%}" 'BEGIN { exit !(p < 100) }'; then
			usage_error "--min-free must be a size (50GiB) or a percentage below 100% (got '$MIN_FREE')"
		fi
		awk -v f="$CACHE_SHARE" -v p="${MIN_FREE%\%}" 'BEGIN { exit !(f + p / 100 < 1) }' ||
			usage_error "--cache-share $CACHE_SHARE and --min-free $MIN_FREE leave no room for the engine"
	else
		size_bytes "$MIN_FREE" >/dev/null || usage_error "--min-free must be a size (50GiB) or a percentage (got '$MIN_FREE')"
	fi
	[[ $CACHESVC_LISTEN =~ ^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$ ]] ||
		usage_error "--cachesvc-listen must be HOST:PORT (got '$CACHESVC_LISTEN')"
	[[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -gt 0 ]] || usage_error "--timeout must be a number of seconds"
	safe_path --root "$ROOT"
	ROOT=${ROOT%/}
	[[ -n $ROOT ]] || usage_error "--root cannot be /"
	safe_path --run-dir "$RUN_DIR"
	RUN_DIR=${RUN_DIR%/}
	safe_path --systemd-dir "$SYSTEMD_DIR"
	[[ -z $ENGINE_TLS_DIR ]] || safe_path --engine-tls-dir "$ENGINE_TLS_DIR"
	[[ -z $CACHESVC_BIN ]] || safe_path --cachesvc-bin "$CACHESVC_BIN"
	[[ -z $ENGINE_BIN ]] || safe_path --engine-bin "$ENGINE_BIN"
	if [[ ${#ENGINE_ADDRS[@]} -eq 0 ]]; then
		if [[ $ENGINE == buildkitd ]]; then ENGINE_ADDRS=(unix:///run/buildkit/buildkitd.sock); else ENGINE_ADDRS=(unix:///var/run/docker.sock); fi
	fi
	local addr
	for addr in "${ENGINE_ADDRS[@]}"; do
		[[ $addr =~ ^unix:///[A-Za-z0-9_./@:+-]+$ || $addr =~ ^tcp://(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]+$ ]] ||
			usage_error "--engine-addr must be unix:///PATH or tcp://HOST:PORT (got '$addr')"
	done
	local arg
	for arg in "${ENGINE_ARGS[@]}"; do
		[[ $arg =~ ^[A-Za-z0-9_./@:+=,-]+$ ]] || usage_error "--engine-arg must be one word of letters, digits and ._/@:+=,- (got '$arg')"
	done
	[[ -n $UNITS_DIR ]] || UNITS_DIR=$SELF_DIR/systemd
	return 0
}

# ------------------------------------------------------------------------------------------------------------
# sizes

size_bytes() { # "50GiB" | "500MB" | "1048576" -> bytes (the units cachesvc itself accepts)
	local text=$1 number unit
	[[ $text =~ ^([0-9]+(\.[0-9]+)?)[[:space:]]*([A-Za-z]*)$ ]] || return 1
	number=${BASH_REMATCH[1]}
	unit=$(tr '[:upper:]' '[:lower:]' <<<"${BASH_REMATCH[3]}")
	case $unit in
	"" | b) unit=1 ;;
	k | kb) unit=1000 ;;
	m | mb) unit=1000000 ;;
	g | gb) unit=1000000000 ;;
	t | tb) unit=1000000000000 ;;
	ki | kib) unit=1024 ;;
	mi | mib) unit=1048576 ;;
	gi | gib) unit=1073741824 ;;
	ti | tib) unit=1099511627776 ;;
	*) return 1 ;;
	esac
	awk -v n="$number" -v u="$unit" 'BEGIN { printf "%.0f\n", n * u }'
}

human() { # bytes -> "1.5 GiB"
	awk -v n="$1" 'BEGIN { split("B KiB MiB GiB TiB PiB", u, " "); i = 1
		while (n >= 1024 && i < 6) { n /= 1024; i++ }
		if (i == 1) printf "%d %s\n", n, u[i]; else printf "%.1f %s\n", n, u[i] }'
}

# ------------------------------------------------------------------------------------------------------------
# small helpers

listen_host() { local h=${CACHESVC_LISTEN%:*}; h=${h#[}; h=${h%]}; printf '%s' "$h"; }
listen_port() { printf '%s' "${CACHESVC_LISTEN##*:}"; }
probe_host() { # where to reach cachesvc from this machine
	local h
	h=$(listen_host)
	case $h in
	0.0.0.0 | "") printf '127.0.0.1' ;;
	::) printf '::1' ;;
	*) printf '%s' "$h" ;;
	esac
}
cache_registry() { # the registry host BuildKit pushes its cache to
	local h
	h=$(probe_host)
	if [[ $h == *:* ]]; then printf '[%s]:%s' "$h" "$(listen_port)"; else printf '%s:%s' "$h" "$(listen_port)"; fi
}

http_status() { # HOST PORT PATH -> prints the status code of a GET (plain HTTP/1.0 over bash's /dev/tcp)
	local host=$1 port=$2 path=$3 line=""
	{
		exec 3<>"/dev/tcp/$host/$port"
	} 2>/dev/null || return 1
	printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$path" "$host" "$port" >&3 || { exec 3<&-; return 1; }
	IFS=$' \r' read -r -t 5 _ line _ <&3 || true
	exec 3<&-
	[[ $line =~ ^[0-9]{3}$ ]] || return 1
	printf '%s' "$line"
}

tcp_open() { # HOST PORT
	{ exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
	exec 3<&-
}

cachesvc_ready() { [[ $(http_status "$(probe_host)" "$(listen_port)" /readyz || true) == 200 ]]; }

first_unix_socket() {
	local addr
	for addr in "${ENGINE_ADDRS[@]}"; do
		if [[ $addr == unix://* ]]; then
			printf '%s' "${addr#unix://}"
			return 0
		fi
	done
	return 1
}

unix_http_get() { # SOCKET PATH -> body (curl, else python3)
	if command -v curl >/dev/null; then
		curl -fsS --max-time 5 --unix-socket "$1" "http://localhost$2" 2>/dev/null
	elif command -v python3 >/dev/null; then
		python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(f"GET {sys.argv[2]} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
if b" 200 " not in head.split(b"\r\n")[0]:
    sys.exit(1)
sys.stdout.write(body.decode(errors="replace"))
PY
	else
		return 2
	fi
}

engine_ready() {
	local sock addr hostport
	if sock=$(first_unix_socket); then
		[[ -S $sock ]] || return 1
		if [[ $ENGINE == dockerd ]]; then
			local body rc=0
			body=$(unix_http_get "$sock" /_ping) || rc=$?
			[[ $rc -eq 2 ]] && return 0 # no HTTP client here: the socket existing is all we can tell
			[[ $rc -eq 0 && $body == OK ]]
			return
		fi
		if command -v buildctl >/dev/null; then
			buildctl --addr "unix://$sock" debug workers >/dev/null 2>&1
			return
		fi
		return 0 # buildkitd creates its socket once it serves
	fi
	addr=${ENGINE_ADDRS[0]}
	hostport=${addr#tcp://}
	local host=${hostport%:*}
	[[ $host == 0.0.0.0 || $host == "" ]] && host=127.0.0.1
	host=${host#[}
	host=${host%]}
	tcp_open "$host" "${hostport##*:}"
}

write_if_changed() { # PATH MODE CONTENT -> returns 0 if the file was (re)written, 1 if it already had CONTENT
	local path=$1 mode=$2 content=$3
	if [[ -f $path ]] && [[ "$(cat -- "$path")" == "$content" ]]; then
		return 1
	fi
	mkdir -p -- "$(dirname -- "$path")"
	local tmp
	tmp=$(mktemp "$path.XXXXXX")
	printf '%s\n' "$content" >"$tmp"
	chmod "$mode" "$tmp"
	mv -f -- "$tmp" "$path"
	return 0
}

pid_alive() { # PIDFILE EXPECTED-COMMAND-SUBSTRING -> prints the pid if that process still runs it
	local pidfile=$1 expect=$2 pid
	[[ -f $pidfile ]] || return 1
	pid=$(<"$pidfile")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	running "$pid" || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$expect" || return 1
	printf '%s' "$pid"
}

running() { # PID: alive and not a zombie (an exited process its parent has not reaped yet)
	local stat
	kill -0 "$1" 2>/dev/null || return 1
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

stop_pid() { # NAME PID TIMEOUT: SIGTERM, wait, SIGKILL
	local name=$1 pid=$2 limit=$3 waited=0
	kill -TERM "$pid" 2>/dev/null || return 0
	while running "$pid"; do
		if ((waited >= limit * 10)); then
			say "$name (pid $pid) did not stop within ${limit}s: killing it"
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
	# a child of ours is a zombie until reaped; `wait` only works on our own children
	wait "$pid" 2>/dev/null || true
}

release_engine_runtime() { # what dockerd leaves mounted in its exec-root after it stops (its netns handle)
	[[ $1 == dockerd && -d $RUN_DIR/docker ]] || return 0
	local mp
	while IFS= read -r mp; do
		umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || true
	done < <(awk -v d="$RUN_DIR/docker/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
}

systemd_mode() {
	[[ $FOREGROUND -eq 0 ]] || return 1
	[[ $USE_SYSTEMD == yes ]] && return 0
	[[ $USE_SYSTEMD == auto && -d /run/systemd/system ]] && command -v systemctl >/dev/null
}

engine_unit() { if [[ $ENGINE == buildkitd ]]; then printf 'buildkitd.service'; else printf 'docker.service'; fi; }

# ------------------------------------------------------------------------------------------------------------
# the disk

DEV_MAJMIN=""

majmin_of_device() { # DEV -> "MAJ:MIN" (decimal, as in /proc/self/mountinfo)
	local hex
	hex=$(stat -L -c '%t:%T' -- "$1") || return 1
	printf '%d:%d' "0x${hex%:*}" "0x${hex#*:}"
}
majmin_mounted_at() { awk -v mp="$1" '$5 == mp { mm = $3 } END { if (mm != "") print mm }' /proc/self/mountinfo; }
mountpoints_of_majmin() { awk -v mm="$1" '$3 == mm { print $5 }' /proc/self/mountinfo; }
source_mounted_at() { findmnt -rn -o SOURCE --mountpoint "$1" 2>/dev/null | tail -n 1; }

lsblk_field() { # LINE KEY -> value from `lsblk -P` output
	local re="(^| )$2=\"([^\"]*)\""
	[[ $1 =~ $re ]] && printf '%s' "${BASH_REMATCH[2]}"
	return 0
}

discover_device() { # the instance-store NVMe: an unmounted NVMe disk without partitions or holders
	local lines line name type pk mnt fstype label model rank best=0 best_list=()
	declare -A has_child=()
	mapfile -t lines < <(lsblk -P -p -o NAME,TYPE,PKNAME,MOUNTPOINT,FSTYPE,LABEL,MODEL 2>/dev/null || true)
	for line in "${lines[@]}"; do
		pk=$(lsblk_field "$line" PKNAME)
		[[ -z $pk ]] || has_child[$pk]=1
	done
	for line in "${lines[@]}"; do
		name=$(lsblk_field "$line" NAME)
		type=$(lsblk_field "$line" TYPE)
		mnt=$(lsblk_field "$line" MOUNTPOINT)
		fstype=$(lsblk_field "$line" FSTYPE)
		label=$(lsblk_field "$line" LABEL)
		model=$(lsblk_field "$line" MODEL)
		[[ $type == disk && $name =~ ^/dev/nvme[0-9]+n[0-9]+$ ]] || continue
		[[ -z ${has_child[$name]:-} && -z $mnt ]] || continue
		[[ -z $fstype || $fstype == ext4 || $fstype == xfs ]] || continue
		rank=1
		[[ $model != *"Instance Storage"* ]] || rank=2
		[[ $label != "$FS_LABEL" ]] || rank=3
		if ((rank > best)); then
			best=$rank
			best_list=("$name")
		elif ((rank == best)); then
			best_list+=("$name")
		fi
	done
	if [[ ${#best_list[@]} -eq 0 ]]; then
		die "no cache disk found (no unmounted NVMe disk without partitions): pass --device DEV, or --device none to use $ROOT as it is"
	fi
	if [[ ${#best_list[@]} -gt 1 ]]; then
		die "several candidate cache disks (${best_list[*]}): pass --device DEV (combine them first, e.g. as an mdadm RAID 0, to use them all)"
	fi
	printf '%s' "${best_list[0]}"
}

resolve_device() { # sets DEVICE (a block device path, or "none") and checks it is ours to use
	if [[ $DEVICE == none ]]; then
		mountpoint -q -- "$ROOT" 2>/dev/null ||
			die "--device none: $ROOT is not a mount point (mount the cache disk or a volume there first)"
		return 0
	fi
	if [[ -z $DEVICE ]]; then
		if mountpoint -q -- "$ROOT" 2>/dev/null; then
			DEVICE=$(source_mounted_at "$ROOT")
			[[ -b $DEVICE ]] || DEVICE=none # a volume, a bind mount, tmpfs...: use it as it is
			[[ $DEVICE == none ]] || DEVICE=$(readlink -f -- "$DEVICE")
			return 0
		fi
		DEVICE=$(discover_device)
	fi
	[[ -e $DEVICE ]] || die "$DEVICE: no such device"
	DEVICE=$(readlink -f -- "$DEVICE")
	[[ -b $DEVICE ]] || die "$DEVICE is not a block device"
	DEV_MAJMIN=$(majmin_of_device "$DEVICE")

	local at_root mp
	at_root=$(majmin_mounted_at "$ROOT")
	if [[ -n $at_root && $at_root != "$DEV_MAJMIN" ]]; then
		die "$ROOT is already a mount point of $(source_mounted_at "$ROOT"), not of $DEVICE: unmount it or choose another --root"
	fi
	while IFS= read -r mp; do
		[[ -z $mp ]] && continue
		mp=$(printf '%b' "$mp") # mountinfo escapes spaces as \040
		if [[ $mp != "$ROOT" && $mp != "$ROOT"/* ]]; then
			die "$DEVICE is mounted at $mp: refusing to use a disk that is in use elsewhere (unmount it first)"
		fi
	done < <(mountpoints_of_majmin "$DEV_MAJMIN")

	local children
	children=$(lsblk -nro NAME -- "$DEVICE" 2>/dev/null | wc -l)
	if ((children > 1)); then
		die "$DEVICE has partitions or is in use (LVM, RAID, device-mapper): pass a partition or a whole unused disk"
	fi
	return 0
}

probe_device() { # -> "fs:TYPE", "pt:TYPE", "blank" or "data"
	local out rc=0 type pttype
	out=$(blkid -p -o export -- "$DEVICE" 2>/dev/null) || rc=$?
	if [[ $rc -eq 0 ]]; then
		type=$(sed -n 's/^TYPE=//p' <<<"$out")
		pttype=$(sed -n 's/^PTTYPE=//p' <<<"$out")
		if [[ -n $pttype ]]; then printf 'pt:%s' "$pttype"; elif [[ -n $type ]]; then printf 'fs:%s' "$type"; else printf 'data'; fi
		return 0
	fi
	[[ $rc -eq 2 ]] || { printf 'data'; return 0; } # ambivalent or unreadable signatures: hands off
	# No signature. A new instance-store or cloud disk reads back as zeros; anything else is someone's data.
	local size tail_skip
	size=$(blockdev --getsize64 "$DEVICE")
	((size >= 512 * 1024 * 1024)) || die "$DEVICE is smaller than 512 MiB: too small for a cache disk"
	cmp -s -n 1048576 -- "$DEVICE" /dev/zero || { printf 'data'; return 0; }
	tail_skip=$((size / 1048576 - 1))
	dd if="$DEVICE" bs=1048576 skip="$tail_skip" count=1 status=none 2>/dev/null | cmp -s -n 1048576 - /dev/zero ||
		{ printf 'data'; return 0; }
	printf 'blank'
}

make_filesystem() {
	local mkfs=mkfs.$FS
	command -v "$mkfs" >/dev/null || die "$mkfs not found: apt-get install $([[ $FS == xfs ]] && echo xfsprogs || echo e2fsprogs)"
	say "creating an $FS filesystem on $DEVICE (it is blank)"
	if [[ $FS == ext4 ]]; then
		# -m 0: no root reserve on a data disk (min_free does that job); -i 16384: an inode per 16 KiB, since
		# engine snapshots hold many small files while blobs are large; lazy init: fast on a multi-TB NVMe.
		mkfs.ext4 -q -L "$FS_LABEL" -m 0 -i 16384 -E lazy_itable_init=1,lazy_journal_init=1 -- "$DEVICE" </dev/null
	else
		# ftype=1 is what overlayfs needs; xfs allocates inodes on demand, so small files never run it out of them.
		mkfs.xfs -q -L "$FS_LABEL" -n ftype=1 -- "$DEVICE" </dev/null
	fi
	if command -v udevadm >/dev/null; then udevadm settle >/dev/null 2>&1 || true; fi
}

prepare_disk() {
	resolve_device
	if [[ $DEVICE == none ]]; then
		say "using $ROOT as it is (a mounted volume: $(source_mounted_at "$ROOT"))"
		return 0
	fi
	if mountpoint -q -- "$ROOT" 2>/dev/null; then
		local opts
		opts=$(findmnt -rn -o OPTIONS --mountpoint "$ROOT" | tail -n 1)
		if [[ ,$opts, != *,noatime,* ]]; then
			say "remounting $ROOT with noatime"
			mount -o remount,noatime -- "$ROOT"
		fi
		say "$DEVICE is already mounted at $ROOT"
		return 0
	fi
	local state size
	size=$(blockdev --getsize64 "$DEVICE")
	if [[ $MIN_FREE != *% ]] && ! awk -v t="$size" -v f="$CACHE_SHARE" -v m="$(size_bytes "$MIN_FREE")" 'BEGIN { exit !(t * (1 - f) > m) }'; then
		die "--cache-share $CACHE_SHARE and --min-free $MIN_FREE leave no room for the engine on this $(human "$size") disk"
	fi
	state=$(probe_device)
	case $state in
	blank) make_filesystem ;;
	fs:ext4 | fs:xfs | fs:ext3 | fs:ext2) say "$DEVICE already holds an ${state#fs:} filesystem: keeping its data" ;;
	fs:*) die "$DEVICE holds ${state#fs:} data: refusing to use or format it (wipe it yourself if it is expendable)" ;;
	pt:*) die "$DEVICE has a ${state#pt:} partition table: refusing to format it (pass a partition, or wipe the disk yourself)" ;;
	*) die "$DEVICE holds data that is not a filesystem: refusing to format it (wipe it yourself if it is expendable)" ;;
	esac
	mkdir -p -- "$ROOT"
	mount -o noatime -- "$DEVICE" "$ROOT" || die "could not mount $DEVICE at $ROOT"
	say "mounted $DEVICE at $ROOT (noatime)"
}

# ------------------------------------------------------------------------------------------------------------
# configuration

TOTAL=0 CACHE_BYTES=0 MIN_FREE_BYTES=0 ENGINE_BYTES=0 RESERVED_BYTES=0
CONFIG_CHANGED_CACHESVC=0 CONFIG_CHANGED_ENGINE=0

compute_budgets() {
	local blocks bsize
	read -r blocks bsize < <(stat -f -c '%b %S' -- "$ROOT")
	TOTAL=$((blocks * bsize))
	CACHE_BYTES=$(awk -v t="$TOTAL" -v f="$CACHE_SHARE" 'BEGIN { printf "%.0f\n", t * f }')
	if [[ $MIN_FREE == *% ]]; then
		MIN_FREE_BYTES=$(awk -v t="$TOTAL" -v p="${MIN_FREE%\%}" 'BEGIN { printf "%.0f\n", t * p / 100 }')
	else
		MIN_FREE_BYTES=$(size_bytes "$MIN_FREE")
	fi
	ENGINE_BYTES=$((TOTAL - CACHE_BYTES - MIN_FREE_BYTES))
	((ENGINE_BYTES > 0)) ||
		die "--cache-share $CACHE_SHARE and --min-free $MIN_FREE leave no room for the engine on this $(human "$TOTAL") disk"
	RESERVED_BYTES=$((ENGINE_BYTES / 10)) # the engine's GC never goes below this
}

layout() {
	mkdir -p -- "$ROOT/etc" "$ROOT/log" "$ROOT/cachesvc"
	mkdir -p -- "$ROOT/$ENGINE_STATE"
	chmod 0700 -- "$ROOT/$ENGINE_STATE"
	mkdir -p -- "$RUN_DIR"
}

ENGINE_STATE=""

cachesvc_config() {
	local min_free_toml
	if [[ $MIN_FREE == *% ]]; then min_free_toml="\"$MIN_FREE\""; else min_free_toml=$MIN_FREE_BYTES; fi
	cat <<EOF
# cachesvc settings, written by launch.sh on every run (change its flags, not this file).
# Budget: --cache-share $CACHE_SHARE of the $(human "$TOTAL") disk; --min-free $MIN_FREE is kept free for both services.
listen = "$CACHESVC_LISTEN"
root = "$ROOT/cachesvc"
max_size = $CACHE_BYTES
min_free = $min_free_toml
EOF
}

toml_list() { # items -> ["a", "b"]
	local out="" item
	for item in "$@"; do out+="${out:+, }\"$item\""; done
	printf '[%s]' "$out"
}

buildkitd_config() {
	cat <<EOF
# buildkitd settings, written by launch.sh on every run (change its flags, not this file). Needs BuildKit >= 0.17.
root = "$ROOT/buildkit"

[grpc]
  address = $(toml_list "${ENGINE_ADDRS[@]}")
EOF
	if [[ -n $ENGINE_TLS_DIR ]]; then
		cat <<EOF
  [grpc.tls]
    cert = "$ENGINE_TLS_DIR/cert.pem"
    key = "$ENGINE_TLS_DIR/key.pem"
    ca = "$ENGINE_TLS_DIR/ca.pem"
EOF
	fi
	cat <<EOF

# The engine and cachesvc share the disk: cachesvc keeps at most $(human "$CACHE_BYTES"), both keep $(human "$MIN_FREE_BYTES") free,
# and the build cache gets the rest: at most $(human "$ENGINE_BYTES") (never collected below $(human "$RESERVED_BYTES")).
[worker.oci]
  enabled = true
  gc = true
  reservedSpace = $RESERVED_BYTES
  maxUsedSpace = $ENGINE_BYTES
  minFreeSpace = $MIN_FREE_BYTES

[worker.containerd]
  enabled = false

# cachesvc speaks plain HTTP on loopback.
[registry."$(cache_registry)"]
  http = true
EOF
}

dockerd_major() { "$ENGINE_BIN" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p' | head -n 1; }

dockerd_config() {
	local major gc
	major=$(dockerd_major)
	if [[ -n $major && $major -ge 28 ]]; then # BuildKit >= 0.17 GC settings
		gc="\"enabled\": true, \"defaultReservedSpace\": \"$RESERVED_BYTES\", \"defaultMaxUsedSpace\": \"$ENGINE_BYTES\", \"defaultMinFreeSpace\": \"$MIN_FREE_BYTES\""
	else # older engines prune down to defaultKeepStorage
		gc="\"enabled\": true, \"defaultKeepStorage\": \"$ENGINE_BYTES\""
	fi
	cat <<EOF
{
  "data-root": "$ROOT/docker",
  "features": {"buildkit": true},
  "builder": {"gc": {$gc}}
}
EOF
}

write_configs() {
	if write_if_changed "$ROOT/etc/cachesvc.toml" 0644 "$(cachesvc_config)"; then
		CONFIG_CHANGED_CACHESVC=1
		say "wrote $ROOT/etc/cachesvc.toml (budget $(human "$CACHE_BYTES"), min free $MIN_FREE)"
	fi
	if [[ $ENGINE == buildkitd ]]; then
		if write_if_changed "$ROOT/etc/buildkitd.toml" 0644 "$(buildkitd_config)"; then
			CONFIG_CHANGED_ENGINE=1
			say "wrote $ROOT/etc/buildkitd.toml (build cache at most $(human "$ENGINE_BYTES"))"
		fi
	else
		if write_if_changed "$ROOT/etc/daemon.json" 0644 "$(dockerd_config)"; then
			CONFIG_CHANGED_ENGINE=1
			say "wrote $ROOT/etc/daemon.json (build cache at most $(human "$ENGINE_BYTES"))"
		fi
	fi
}

# ------------------------------------------------------------------------------------------------------------
# commands the services run

tls_flags_dockerd() {
	[[ -n $ENGINE_TLS_DIR ]] || return 0
	printf '%s\n' --tlsverify "--tlscacert=$ENGINE_TLS_DIR/ca.pem" "--tlscert=$ENGINE_TLS_DIR/cert.pem" "--tlskey=$ENGINE_TLS_DIR/key.pem"
}

cachesvc_cmd() { CMD=("$CACHESVC_BIN" serve --config "$ROOT/etc/cachesvc.toml"); }

engine_cmd() { # the engine as a plain process (background and foreground modes)
	if [[ $ENGINE == buildkitd ]]; then
		CMD=("$ENGINE_BIN" --config "$ROOT/etc/buildkitd.toml" "${ENGINE_ARGS[@]}")
		return
	fi
	CMD=("$ENGINE_BIN" --config-file "$ROOT/etc/daemon.json" --exec-root "$RUN_DIR/docker"
		--pidfile "$RUN_DIR/dockerd-own.pid")
	local addr flag
	for addr in "${ENGINE_ADDRS[@]}"; do CMD+=(-H "$addr"); done
	while IFS= read -r flag; do [[ -z $flag ]] || CMD+=("$flag"); done < <(tls_flags_dockerd)
	CMD+=("${ENGINE_ARGS[@]}")
}

find_binaries() {
	if [[ -z $CACHESVC_BIN ]]; then
		CACHESVC_BIN=$(command -v cachesvc || true)
		[[ -n $CACHESVC_BIN ]] || die "cachesvc not found on PATH: install it (pip install cachesvc-*.whl) or pass --cachesvc-bin PATH"
	fi
	[[ -x $CACHESVC_BIN && ! -d $CACHESVC_BIN ]] || die "$CACHESVC_BIN: not an executable cachesvc command"
	if [[ -z $ENGINE_BIN ]]; then
		ENGINE_BIN=$(PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin command -v "$ENGINE" || true)
		if [[ -z $ENGINE_BIN ]]; then
			if [[ $ENGINE == buildkitd ]]; then
				die "buildkitd not found on PATH: install BuildKit >= 0.17 (a moby/buildkit release) or pass --engine-bin PATH"
			fi
			die "dockerd not found on PATH: install Docker Engine (apt-get install docker.io) or pass --engine-bin PATH"
		fi
	fi
	[[ -x $ENGINE_BIN && ! -d $ENGINE_BIN ]] || die "$ENGINE_BIN: engine binary not found or not executable"
	CACHESVC_BIN=$(readlink -f -- "$CACHESVC_BIN")
	ENGINE_BIN=$(readlink -f -- "$ENGINE_BIN")
	if [[ -n $ENGINE_TLS_DIR ]]; then
		local f
		for f in ca.pem cert.pem key.pem; do
			[[ -r $ENGINE_TLS_DIR/$f ]] || die "--engine-tls-dir: $ENGINE_TLS_DIR/$f not found"
		done
	else
		local addr
		for addr in "${ENGINE_ADDRS[@]}"; do
			[[ $addr != tcp://* ]] || say "warning: $addr is unauthenticated without --engine-tls-dir: anyone who reaches it can run builds as root"
		done
	fi
	# dockerd decompresses pulled layers with unpigz when it finds it, with Go's slower gzip otherwise.
	if [[ $ENGINE == dockerd ]] && ! command -v unpigz >/dev/null; then
		say "warning: unpigz not found: dockerd will unpack cached layers with Go's gzip, slower (apt-get install pigz)"
	fi
}

# ------------------------------------------------------------------------------------------------------------
# waiting

wait_for() { # WHAT PID|"" LOG CHECK-FUNCTION
	local what=$1 pid=$2 logf=$3 check=$4 deadline=$((SECONDS + TIMEOUT))
	while ! "$check"; do
		if [[ -n $pid ]] && ! running "$pid"; then
			local last=""
			[[ -z $logf || ! -f $logf ]] || last=$(grep -v '^[[:space:]]*$' "$logf" | tail -n 1 || true)
			die "$what exited during start-up${logf:+ (log: $logf)}${last:+: $last}"
		fi
		if [[ ${STOPPING:-0} -eq 1 ]]; then return 1; fi
		((SECONDS < deadline)) || die "$what not ready after ${TIMEOUT}s${logf:+ (log: $logf)}"
		sleep 0.2
	done
}

# ------------------------------------------------------------------------------------------------------------
# state kept between runs (for --stop and --check)

write_state() { # MODE
	write_if_changed "$RUN_DIR/state" 0644 "$(printf 'mode=%s\nengine=%s\ncachesvc_listen=%s\nengine_addr=%s\nroot=%s\n' \
		"$1" "$ENGINE" "$CACHESVC_LISTEN" "${ENGINE_ADDRS[0]}" "$ROOT")" || true
}

read_state() { # fills STATE_* from $RUN_DIR/state if present
	STATE_MODE="" STATE_ENGINE="" STATE_LISTEN="" STATE_ADDR=""
	[[ -f $RUN_DIR/state ]] || return 1
	local key value
	while IFS='=' read -r key value; do
		case $key in
		mode) STATE_MODE=$value ;;
		engine) STATE_ENGINE=$value ;;
		cachesvc_listen) STATE_LISTEN=$value ;;
		engine_addr) STATE_ADDR=$value ;;
		esac
	done <"$RUN_DIR/state"
}

# ------------------------------------------------------------------------------------------------------------
# background mode: plain detached processes with pid files

start_detached() { # NAME LOG CMD...
	local name=$1 logf=$2
	shift 2
	setsid "$@" </dev/null >>"$logf" 2>&1 &
	STARTED_PID=$!
	printf '%s\n' "$STARTED_PID" >"$RUN_DIR/$name.pid"
}

cmdline_matches() { # PID: its command line ends with CMD (an interpreter may come first, as for cachesvc)
	local have want
	have=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null) || return 1
	want=$(printf '%s\n' "${CMD[@]}")
	[[ $have == "$want" || $have == *$'\n'"$want" ]]
}

ensure_running() { # NAME KEY LOG CHANGED: (re)start CMD detached unless it already runs with these settings
	local name=$1 key=$2 logf=$3 changed=$4 pid
	if pid=$(pid_alive "$RUN_DIR/$key.pid" "${CMD[0]}"); then
		if [[ $changed -eq 1 ]]; then
			say "$name settings changed: restarting it"
		elif ! cmdline_matches "$pid"; then
			say "$name command line changed: restarting it"
		else
			say "$name already running (pid $pid)"
			STARTED_PID=$pid
			return 0
		fi
		stop_pid "$name" "$pid" 60
	fi
	start_detached "$key" "$logf" "${CMD[@]}"
	say "started $name (pid $STARTED_PID, log $logf)"
}

run_background() {
	cachesvc_cmd
	ensure_running cachesvc cachesvc "$ROOT/log/cachesvc.log" "$CONFIG_CHANGED_CACHESVC"
	wait_for cachesvc "$STARTED_PID" "$ROOT/log/cachesvc.log" cachesvc_ready

	local sock
	for sock in "${ENGINE_ADDRS[@]}"; do
		[[ $sock != unix://* ]] || mkdir -p -- "$(dirname -- "${sock#unix://}")"
	done
	engine_cmd
	ensure_running "$ENGINE" engine "$ROOT/log/$ENGINE.log" "$CONFIG_CHANGED_ENGINE"
	wait_for "$ENGINE" "$STARTED_PID" "$ROOT/log/$ENGINE.log" engine_ready
	write_state background
}

# ------------------------------------------------------------------------------------------------------------
# foreground mode: one supervisor (this shell) for both; for containers (PID 1, or under tini)

STOPPING=0
FG_CS_PID=""
FG_EN_PID=""
on_stop_signal() { STOPPING=1; }

stop_foreground_children() { # also on any exit (a failed start-up included): never leave a child behind
	trap - EXIT
	# the engine first, so that builds still exporting their cache can finish talking to cachesvc
	if [[ -n $FG_EN_PID ]]; then
		say "stopping $ENGINE (pid $FG_EN_PID)"
		stop_pid "$ENGINE" "$FG_EN_PID" 60
		release_engine_runtime "$ENGINE"
	fi
	if [[ -n $FG_CS_PID ]]; then
		say "stopping cachesvc (pid $FG_CS_PID)"
		stop_pid cachesvc "$FG_CS_PID" 30
	fi
	rm -f -- "$RUN_DIR/cachesvc.pid" "$RUN_DIR/engine.pid" "$RUN_DIR/supervisor.pid" "$RUN_DIR/state"
}

run_foreground() {
	local pid
	if pid=$(pid_alive "$RUN_DIR/supervisor.pid" "$PROG") && [[ $pid != "$$" ]]; then
		die "already running in the foreground (pid $pid)"
	fi
	if pid=$(pid_alive "$RUN_DIR/cachesvc.pid" "$CACHESVC_BIN") || pid=$(pid_alive "$RUN_DIR/engine.pid" "$ENGINE_BIN"); then
		die "services from an earlier background run are still running (pid $pid): launch.sh --stop first"
	fi
	printf '%s\n' "$$" >"$RUN_DIR/supervisor.pid"
	trap on_stop_signal TERM INT HUP QUIT
	trap stop_foreground_children EXIT

	local sock
	cachesvc_cmd
	setsid "${CMD[@]}" </dev/null &
	FG_CS_PID=$!
	printf '%s\n' "$FG_CS_PID" >"$RUN_DIR/cachesvc.pid"
	say "started cachesvc (pid $FG_CS_PID)"
	if wait_for cachesvc "$FG_CS_PID" "" cachesvc_ready; then
		for sock in "${ENGINE_ADDRS[@]}"; do
			[[ $sock != unix://* ]] || mkdir -p -- "$(dirname -- "${sock#unix://}")"
		done
		engine_cmd
		setsid "${CMD[@]}" </dev/null &
		FG_EN_PID=$!
		printf '%s\n' "$FG_EN_PID" >"$RUN_DIR/engine.pid"
		say "started $ENGINE (pid $FG_EN_PID)"
		if wait_for "$ENGINE" "$FG_EN_PID" "" engine_ready; then
			write_state foreground
			print_summary
		fi
	fi

	# Supervise by polling rather than `wait -n`: a child that died while this shell was busy (and got reaped by
	# it then) would never wake `wait -n`. `wait` on a background sleep returns at once when a signal arrives.
	local status=0 which="" tick
	while [[ $STOPPING -eq 0 ]]; do
		if ! running "$FG_CS_PID"; then
			which=cachesvc
		elif [[ -n $FG_EN_PID ]] && ! running "$FG_EN_PID"; then
			which=$ENGINE
		fi
		if [[ -n $which ]]; then
			say "$which exited unexpectedly: stopping"
			status=1
			break
		fi
		sleep 0.5 &
		tick=$!
		wait "$tick" 2>/dev/null || kill "$tick" 2>/dev/null || true
	done
	[[ $STOPPING -eq 0 ]] || say "stopping (signal received)"
	stop_foreground_children
	say "stopped"
	exit "$status"
}

# ------------------------------------------------------------------------------------------------------------
# systemd mode: install the units and let systemd run both

render_unit() { # TEMPLATE -> unit text with this machine's paths and flags
	local template=$1 line out=""
	[[ -f $template ]] || die "unit template $template not found (pass --units-dir DIR)"
	local extra_engine="" arg addr flag
	for arg in "${ENGINE_ARGS[@]}"; do extra_engine+=" $arg"; done
	while IFS= read -r line || [[ -n $line ]]; do
		case $line in
		"ExecStart=/usr/local/bin/cachesvc "*)
			line="ExecStart=$CACHESVC_BIN ${line#ExecStart=/usr/local/bin/cachesvc }"
			;;
		"ExecStart=/usr/local/bin/buildkitd "*)
			line="ExecStart=$ENGINE_BIN ${line#ExecStart=/usr/local/bin/buildkitd }$extra_engine"
			;;
		"ExecStart=/usr/sbin/dockerd "*)
			line="ExecStart=$ENGINE_BIN ${line#ExecStart=/usr/sbin/dockerd }"
			if ! systemctl cat containerd.service >/dev/null 2>&1 && [[ ! -f /lib/systemd/system/containerd.service && ! -f /usr/lib/systemd/system/containerd.service ]]; then
				line=${line/ --containerd=\/run\/containerd\/containerd.sock/}
			fi
			for addr in "${ENGINE_ADDRS[@]}"; do
				[[ $addr == unix:///var/run/docker.sock || $addr == unix:///run/docker.sock ]] || line+=" -H $addr"
			done
			while IFS= read -r flag; do [[ -z $flag ]] || line+=" $flag"; done < <(tls_flags_dockerd)
			line+=$extra_engine
			;;
		esac
		line=${line//\/var\/lib\/builder/"$ROOT"}
		out+=$line$'\n'
	done <"$template"
	printf '%s' "${out%$'\n'}"
}

UNIT_FILES=() # "template|installed path" pairs for the selected engine

select_units() {
	UNIT_FILES=("$UNITS_DIR/cachesvc.service|cachesvc.service")
	if [[ $ENGINE == buildkitd ]]; then
		UNIT_FILES+=("$UNITS_DIR/buildkitd.service|buildkitd.service")
	else
		UNIT_FILES+=("$UNITS_DIR/docker.service.d/cachesvc-builder.conf|docker.service.d/cachesvc-builder.conf")
	fi
}

systemd_ensure() { # UNIT CHANGED
	local unit=$1 changed=$2
	if systemctl is-active --quiet "$unit"; then
		if [[ $changed -eq 1 ]]; then
			say "restarting $unit (settings changed)"
			systemctl restart "$unit" || die "$unit did not restart: journalctl -u $unit"
		else
			say "$unit already running"
		fi
	else
		say "starting $unit"
		systemctl start "$unit" || die "$unit did not start: journalctl -u $unit"
	fi
}

run_systemd() {
	local pair reload=0 cs_changed=$CONFIG_CHANGED_CACHESVC en_changed=$CONFIG_CHANGED_ENGINE en_unit
	en_unit=$(engine_unit)
	if [[ $ENGINE == dockerd ]] && ! systemctl cat docker.service >/dev/null 2>&1; then
		die "--engine dockerd under systemd needs the docker.service unit of your Docker package (apt-get install docker.io)"
	fi
	select_units
	for pair in "${UNIT_FILES[@]}"; do
		if write_if_changed "$SYSTEMD_DIR/${pair#*|}" 0644 "$(render_unit "${pair%%|*}")"; then
			reload=1
			say "installed $SYSTEMD_DIR/${pair#*|}"
			if [[ ${pair#*|} == cachesvc.service ]]; then cs_changed=1; else en_changed=1; fi
		fi
	done
	[[ $reload -eq 0 ]] || systemctl daemon-reload
	systemctl enable --quiet cachesvc.service "$en_unit"
	systemd_ensure cachesvc.service "$cs_changed"
	wait_for cachesvc "" "" cachesvc_ready
	systemd_ensure "$en_unit" "$en_changed"
	wait_for "$ENGINE" "" "" engine_ready
	write_state systemd
}

# ------------------------------------------------------------------------------------------------------------
# what a CI job passes

repo_name() { # lowercase, registry path characters only
	local r
	r=$(tr '[:upper:]' '[:lower:]' <<<"$1")
	if [[ $r == "<"*">" ]]; then printf '%s' "$r"; return; fi
	r=$(sed -e 's#[^a-z0-9._/-]#-#g' -e 's#//*#/#g' -e 's#^[^a-z0-9]*##' -e 's#[^a-z0-9]*$##' <<<"$r")
	printf '%s' "${r:-repo}"
}
tag_name() { # a valid tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
	local t=$1
	if [[ $t == "<"*">" ]]; then printf '%s' "$t"; return; fi
	t=$(sed -e 's#[^A-Za-z0-9_.-]#-#g' -e 's#^[.-]*##' <<<"$t")
	t=${t:0:128}
	printf '%s' "${t:-latest}"
}

cache_mode() { # registry (cache export to a registry works) or inline (dockerd with its classic image store)
	[[ $ENGINE == buildkitd ]] && { printf 'registry'; return; }
	local sock info=""
	if sock=$(first_unix_socket); then
		info=$(unix_http_get "$sock" /info || true)
	fi
	if [[ $info == *io.containerd.snapshotter* ]]; then printf 'registry'; else printf 'inline'; fi
}

summary_text() {
	local reg repo branch default base mode engine_where
	reg=$(cache_registry)
	repo=$(repo_name "$CI_REPO")
	branch=$(tag_name "$CI_BRANCH")
	default=$(tag_name "$CI_DEFAULT_BRANCH")
	base="$reg/cache/$repo"
	mode=$(cache_mode)
	engine_where=${ENGINE_ADDRS[*]}
	echo "builder ready"
	if [[ $DEVICE == none ]]; then
		echo "  disk:     $ROOT ($(human "$TOTAL"))"
	else
		echo "  disk:     $DEVICE ($(findmnt -rn -o FSTYPE --mountpoint "$ROOT" | tail -n 1), $(human "$TOTAL")) at $ROOT"
	fi
	echo "  cachesvc: http://$CACHESVC_LISTEN (budget $(human "$CACHE_BYTES"), min free $MIN_FREE) data $ROOT/cachesvc"
	echo "  engine:   $ENGINE at $engine_where (build cache at most $(human "$ENGINE_BYTES")) state $ROOT/$ENGINE_STATE"
	echo "CI cache flags ($mode cache, repository $repo, branch $branch, default branch $default):"
	if [[ $mode == registry ]]; then
		echo "  --cache-to type=registry,ref=$base:$branch,mode=max"
		echo "  --cache-from type=registry,ref=$base:$branch"
		[[ $default == "$branch" ]] || echo "  --cache-from type=registry,ref=$base:$default"
	else
		echo "  --cache-from $base:$branch"
		[[ $default == "$branch" ]] || echo "  --cache-from $base:$default"
		echo "  --build-arg BUILDKIT_INLINE_CACHE=1"
		echo "  --tag $base:$branch"
		echo "then push the tag (it carries the cache): docker push $base:$branch"
		echo "(this Docker Engine keeps images in its classic store, which cannot export a registry cache; with the"
		echo " containerd image store enabled it can, and launch.sh then prints --cache-to ...,mode=max flags)"
	fi
}

print_summary() { # in one write, so that a reader never sees half of it
	local text
	text=$(summary_text)
	printf '%s\n' "$text"
}

# ------------------------------------------------------------------------------------------------------------
# --stop and --check

stop_all() {
	read_state || true
	local engine=${STATE_ENGINE:-$ENGINE} pid
	if [[ ${STATE_MODE:-} == systemd ]] || { [[ -z ${STATE_MODE:-} ]] && systemd_mode && systemctl is-active --quiet cachesvc.service; }; then
		local en_units=(buildkitd.service)
		# docker.socket would start docker.service again on the next client connection
		[[ $engine == buildkitd ]] || en_units=(docker.socket docker.service)
		say "stopping ${en_units[*]} and cachesvc.service"
		systemctl stop "${en_units[@]}" cachesvc.service
	else
		if pid=$(pid_alive "$RUN_DIR/supervisor.pid" "$PROG"); then
			say "stopping the foreground supervisor (pid $pid)"
			kill -TERM "$pid"
			local waited=0
			while running "$pid" && ((waited < 1200)); do
				sleep 0.1
				waited=$((waited + 1))
			done
		fi
		if [[ -f $RUN_DIR/engine.pid ]] && pid=$(<"$RUN_DIR/engine.pid") && [[ $pid =~ ^[0-9]+$ ]] && running "$pid"; then
			say "stopping $engine (pid $pid)"
			stop_pid "$engine" "$pid" 60
		fi
		release_engine_runtime "$engine"
		if [[ -f $RUN_DIR/cachesvc.pid ]] && pid=$(<"$RUN_DIR/cachesvc.pid") && [[ $pid =~ ^[0-9]+$ ]] && running "$pid"; then
			say "stopping cachesvc (pid $pid)"
			stop_pid cachesvc "$pid" 30
		fi
	fi
	rm -f -- "$RUN_DIR/cachesvc.pid" "$RUN_DIR/engine.pid" "$RUN_DIR/supervisor.pid" "$RUN_DIR/state"
	say "stopped"
}

check_all() {
	if read_state; then
		CACHESVC_LISTEN=$STATE_LISTEN
		ENGINE=$STATE_ENGINE
		ENGINE_ADDRS=("$STATE_ADDR")
	fi
	cachesvc_ready || { say "cachesvc is not ready on $CACHESVC_LISTEN"; exit 1; }
	engine_ready || { say "$ENGINE does not answer on ${ENGINE_ADDRS[0]}"; exit 1; }
	exit 0
}

# ------------------------------------------------------------------------------------------------------------

main() {
	parse_args "$@"
	validate_args
	if [[ $ENGINE == buildkitd ]]; then ENGINE_STATE=buildkit; else ENGINE_STATE=docker; fi
	case $ACTION in
	render-units)
		# The units of the selected engine as they would be installed (for review and `systemd-analyze verify`).
		[[ -n $CACHESVC_BIN ]] || CACHESVC_BIN=/usr/local/bin/cachesvc
		if [[ -z $ENGINE_BIN ]]; then
			if [[ $ENGINE == buildkitd ]]; then ENGINE_BIN=/usr/local/bin/buildkitd; else ENGINE_BIN=/usr/sbin/dockerd; fi
		fi
		select_units
		local pair
		for pair in "${UNIT_FILES[@]}"; do
			write_if_changed "$RENDER_DIR/${pair#*|}" 0644 "$(render_unit "${pair%%|*}")" || true
		done
		return 0
		;;
	print-device)
		if [[ -z $DEVICE ]] && ! mountpoint -q -- "$ROOT" 2>/dev/null; then
			discover_device
			echo
		else
			resolve_device
			printf '%s\n' "$DEVICE"
		fi
		return 0
		;;
	check) check_all ;;
	esac
	[[ $EUID -eq 0 ]] || die "must run as root: it mounts the cache disk and starts daemons"
	if [[ $ACTION == stop ]]; then
		stop_all
		return 0
	fi

	find_binaries
	prepare_disk
	compute_budgets
	layout
	write_configs
	if [[ $FOREGROUND -eq 1 ]]; then
		run_foreground
	elif systemd_mode; then
		run_systemd
	else
		run_background
	fi
	print_summary
}

main "$@"
