#!/bin/sh
# The whole test suite: installs what it needs (Debian packages through
# `ciab doctor --install`, plus the extras the tests use), then runs every
# unit test and the end-to-end tests that build images and boot them in QEMU.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: run as root (the build runs mmdebstrap, the tests boot QEMU)" >&2
    exit 1
fi
./ciab doctor --install
# Test-only tools: debugfs/e2fsck (e2fsprogs), setfattr (attr), a real
# browser for the status page as a person sees it (chromium), and the peer
# `ciab flash` is compared with (bmaptool from bmap-tools), and GNU cpio to
# extract the installer's initramfs as the kernel would; a real Debian
# docker-registry to push test images to and serve bundles from, and skopeo
# to push them (and as the peer of the registry benchmark), and a static
# busybox, the one binary in the test images.
missing=""
[ -x /usr/bin/docker-registry ] || missing="$missing docker-registry"
command -v skopeo >/dev/null 2>&1 || missing="$missing skopeo"
# The test images' layer is /bin/busybox: it must be the static build.
dpkg -s busybox-static >/dev/null 2>&1 || missing="$missing busybox-static"
command -v cpio >/dev/null 2>&1 || missing="$missing cpio"
command -v bmaptool >/dev/null 2>&1 || missing="$missing bmap-tools"
command -v setfattr >/dev/null 2>&1 || missing="$missing attr"
command -v debugfs >/dev/null 2>&1 || missing="$missing e2fsprogs"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
# Keystone's Fernet keys are made in Rust and checked with the library Keystone uses.
/usr/bin/python3 -c "import cryptography" 2>/dev/null || missing="$missing python3-cryptography"
# The TLS front end's configuration is checked by HAProxy itself (haproxy -c).
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
# The Debian cloud image's e2e test logs in with a key pair over SSH.
command -v ssh-keygen >/dev/null 2>&1 || missing="$missing openssh-client"
# The IaaS e2e test's stock S3 client, against the box's object storage.
command -v s3cmd >/dev/null 2>&1 || missing="$missing s3cmd"
if [ -n "$missing" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# Release mode: the tests hash and copy multi-GiB sparse images.
cargo test --release --locked --workspace -- --test-threads=2 "$@"
