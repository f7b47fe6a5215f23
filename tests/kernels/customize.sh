#!/bin/sh
# mmdebstrap --customize-hook for a bpfleet kernel-matrix guest (see tests/kernels/images.py).
# $1: the rootfs directory, $2: the controller's SSH public key. Changing this file changes
# the image cache key, so cached images are rebuilt with it.
set -eu
root=$1
pubkey=$2

echo bpfleet-guest > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbpfleet-guest\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"

# Root by key only.
mkdir -p "$root/root/.ssh"
chmod 0700 "$root/root/.ssh"
install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"
mkdir -p "$root/etc/ssh/sshd_config.d"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\nMaxStartups 100:30:200\nMaxSessions 50\n' \
  > "$root/etc/ssh/sshd_config.d/bpfleet.conf"

# The guest's lab address comes from the kernel command line (bpfleet.addr=, bpfleet.addr6=),
# so one cached image serves any address. net.ifnames=0 on the command line names the NIC eth0.
cat > "$root/usr/local/sbin/bpfleet-guest-net" <<'NET'
#!/bin/sh
set -eu
for word in $(cat /proc/cmdline); do
  case "$word" in
    bpfleet.addr=*) addr=${word#bpfleet.addr=} ;;
    bpfleet.addr6=*) addr6=${word#bpfleet.addr6=} ;;
  esac
done
ip link set lo up
ip link set eth0 up
[ -n "${addr:-}" ] && ip addr replace "$addr" dev eth0
[ -n "${addr6:-}" ] && ip -6 addr replace "$addr6" dev eth0 nodad
exit 0
NET
chmod 0755 "$root/usr/local/sbin/bpfleet-guest-net"
cat > "$root/etc/systemd/system/bpfleet-guest-net.service" <<'UNIT'
[Unit]
Description=bpfleet guest: lab address from the kernel command line
Wants=network.target sys-subsystem-net-devices-eth0.device
After=sys-subsystem-net-devices-eth0.device
Before=network.target ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/bpfleet-guest-net

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable bpfleet-guest-net.service

# Nothing that writes to or waits on the serial console, nothing periodic.
for unit in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
            man-db.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service; do
  chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done

# Debian builds virtio as modules: the initramfs must load them to find /dev/vda.
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all
