#!/bin/bash
# PID 1 of the User-Mode Linux guest that test/vm/runner.ts boots. Not meant to be run by hand.
#
# The kernel starts it from the host's root, seen read-only through hostfs, with WEAVEVM_CTL (a host
# directory the runner prepared) in the environment: the kernel hands unknown name=value boot
# parameters to init as environment variables. $WEAVEVM_CTL/conf says where the guest kernel's modules
# and module tools are, which host directory to share read-write, and which modules to load.
#
# Stage 1: build a writable root (hostfs lower + tmpfs upper, overlayfs), mount the control dir and the
# shared work dir read-write through hostfs, pivot into it. Stage 2: a minimal system (proc, sys, dev,
# cgroup2, modules), then the command from $WEAVEVM_CTL/cmd with its output to $WEAVEVM_CTL/output,
# its status to $WEAVEVM_CTL/rc, and power off. hostfs writes are synchronous on the host, so nothing
# is lost at power-off. No status file means the guest failed: the runner says so and shows the console.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

poweroff_now() { sync; echo o > /proc/sysrq-trigger; sleep 10; }
fail() { echo "weave-vm guest-init: $*" > /dev/console; poweroff_now; }

# Every command is a fork+exec, and in UML each costs tens of ms (hundreds when the host is busy):
# the stages below use bash builtins where they can and batch the rest.
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }

stage1() {
  [[ -n ${WEAVEVM_CTL:-} && -f $WEAVEVM_CTL/conf ]] || { echo "weave-vm: no WEAVEVM_CTL/conf" > /dev/console; mount -t proc proc /proc; poweroff_now; }
  export WEAVEVM_T1=$(now_us)   # boot phases for the runner's timing report (UML shares the host's clock)
  source "$WEAVEVM_CTL/conf"
  mount -t proc proc /proc
  local ko=("$MODDIR"/kernel/fs/overlayfs/overlay.ko*)
  "$MODTOOLS/insmod" "${ko[0]}" || fail "insmod overlay"
  # /dev is the kernel's auto-mounted devtmpfs: the only writable place before the overlay exists
  mkdir -p /dev/.rw && mount -t tmpfs -o mode=755 tmpfs /dev/.rw || fail "tmpfs for the overlay"
  local n=/dev/.rw/root
  mkdir -p /dev/.rw/u /dev/.rw/w "$n" || fail "mkdir"
  mount -t overlay -o lowerdir=/,upperdir=/dev/.rw/u,workdir=/dev/.rw/w overlay "$n" || fail "overlay root"
  mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$n/run" || fail "tmpfs /run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$n/tmp" || fail "tmpfs /tmp"
  mkdir -p "$n/run/vmctl" "$n$WORK" "$n/run/oldroot" || fail "mkdir"
  mount -t hostfs -o "$WEAVEVM_CTL" hostfs "$n/run/vmctl" || fail "hostfs $WEAVEVM_CTL"
  mount -t hostfs -o "$WORK" hostfs "$n$WORK" || fail "hostfs $WORK"
  cd "$n" && pivot_root . run/oldroot || fail "pivot_root"
  exec /bin/bash /run/vmctl/guest-init.sh 2
}

stage2() {
  source /run/vmctl/conf
  printf 'init %s\nstage2 %s\n' "$WEAVEVM_T1" "$(now_us)" > /run/vmctl/phases
  unset WEAVEVM_CTL WEAVEVM_T1
  umount -l /run/oldroot 2>/dev/null
  mount -t proc proc /proc 2>/dev/null
  mount -t sysfs sysfs /sys 2>/dev/null
  mount -t devtmpfs devtmpfs /dev 2>/dev/null
  mkdir -p /dev/pts /dev/shm "/lib/modules/$KVER"
  mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
  mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
  ln -sfn /proc/self/fd /dev/fd   # bash process substitution
  echo weave-vm > /proc/sys/kernel/hostname
  # the guest kernel's modules where modprobe looks, and modprobe for the kernel's autoloading
  mount --bind "$MODDIR" "/lib/modules/$KVER"
  echo "$MODTOOLS/modprobe" > /proc/sys/kernel/modprobe
  printf 'modules %s\n' "$(now_us)" >> /run/vmctl/phases
  if [[ -n $MODULES ]] && ! "$MODTOOLS/modprobe" -a $MODULES > /run/vmctl/modprobe.log 2>&1; then
    # not the command's status: the runner turns this into its own error
    echo "modprobe -a $MODULES failed: $(< /run/vmctl/modprobe.log)" > /run/vmctl/setup_error
    poweroff_now
  fi
  # an empty modprobe path makes the kernel's module requests fail at once instead of starting a process
  [[ $AUTOLOAD == 0 ]] && echo > /proc/sys/kernel/modprobe
  ip link set lo up
  printf 'command %s\n' "$(now_us)" >> /run/vmctl/phases
  ( exec </dev/null >>/run/vmctl/output 2>&1; source /run/vmctl/cmd ); echo $? > /run/vmctl/rc
  poweroff_now
}

case ${1:-1} in
  1) stage1 ;;
  2) stage2 ;;
  *) fail "unknown stage $1" ;;
esac
