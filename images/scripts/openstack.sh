#!/bin/sh
# Post-install script of the OpenStack layer (packages.post_install in
# images/eval.toml). Runs inside the image's root at build time, natively, with
# /proc, /sys and /dev mounted by mmdebstrap. Three jobs:
#
# 1. Schema migrations. Every `*-manage db sync` runs here, against a
#    throw-away MariaDB, and the migrated schemas ship as SQL dumps in
#    /usr/share/ciab/schemas/<database>.sql: first boot loads them into the
#    box's own MariaDB in seconds instead of running the migrations in Python
#    under emulation (keystone's alone takes 61 s under TCG). Dumps, not a
#    datadir: the text is byte-reproducible, InnoDB's files are not. They hold
#    no user, no password and no secret. Swift's rings are made here too.
# 2. Scrub what package scripts generated per machine (Erlang cookie, Open
#    vSwitch's system id, the iSCSI initiator name, MariaDB's datadir):
#    every box makes its own at first boot.
# 3. Mask every service: first boot configures, unmasks and starts them.
set -eu

out=/usr/share/ciab/schemas
stamp=$(date -u -d "@${SOURCE_DATE_EPOCH:?}" "+%Y-%m-%d %H:%M:%S")
tmp=$(mktemp -d /tmp/ciab-schemas.XXXXXX)
db=$tmp/db
sock=$tmp/mysqld.sock
mkdir -p "$db" "$out"
chown mysql:mysql "$tmp" "$db"

# The same packages give the same dump: Python's hash order decides the order
# of index definitions, and migrations insert rows with uuid4() ids (Cinder's
# default volume type, Neutron's default security group rule templates), so
# those ids are the same on every box, like any id the packages ship.
mkdir -p "$tmp/python"
cat > "$tmp/python/sitecustomize.py" <<'PY'
import random, uuid
_rng = random.Random(0)
uuid.uuid4 = lambda: uuid.UUID(int=_rng.getrandbits(128), version=4)
PY
export PYTHONHASHSEED=0 PYTHONPATH="$tmp/python"

mariadb-install-db --user=mysql --datadir="$db" --auth-root-authentication-method=socket --skip-test-db >"$tmp/install.log" 2>&1 \
    || { cat "$tmp/install.log" >&2; exit 1; }
mariadbd --user=mysql --datadir="$db" --socket="$sock" --skip-networking --pid-file="$tmp/mysqld.pid" --log-error="$tmp/mysqld.err" &
mysqld_pid=$!
i=0
until [ -S "$sock" ]; do
    i=$((i + 1))
    if [ $i -gt 240 ] || ! kill -0 $mysqld_pid 2>/dev/null; then
        echo "openstack.sh: the build-time MariaDB did not start:" >&2
        cat "$tmp/mysqld.err" >&2
        exit 1
    fi
    sleep 0.25
done

databases="keystone glance placement nova_api nova neutron cinder octavia barbican"
for d in $databases; do
    mariadb --socket="$sock" -uroot -e "CREATE DATABASE $d CHARACTER SET utf8mb4"
done
url() { echo "mysql+pymysql://root@localhost/$1?unix_socket=$sock&charset=utf8"; }
conf() { # conf NAME LINE... -> path of a config file holding the lines
    f=$tmp/$1.conf
    shift
    printf '%s\n' "$@" > "$f"
    echo "$f"
}
migrate() { # migrate WHAT COMMAND...
    what=$1
    shift
    t0=$(date +%s)
    "$@" > "$tmp/$what.log" 2>&1 || { echo "openstack.sh: $what failed:" >&2; tail -n 30 "$tmp/$what.log" >&2; exit 1; }
    echo "openstack.sh: $what migrated in $(( $(date +%s) - t0 )) s"
}
migrate keystone keystone-manage --config-file "$(conf keystone '[database]' "connection = $(url keystone)")" db_sync
migrate glance glance-manage --config-file "$(conf glance '[database]' "connection = $(url glance)")" db_sync
migrate placement placement-manage --config-file "$(conf placement '[placement_database]' "connection = $(url placement)")" db sync
nova_conf=$(conf nova '[api_database]' "connection = $(url nova_api)" '[database]' "connection = $(url nova)")
migrate nova_api nova-manage --config-file "$nova_conf" api_db sync
migrate nova nova-manage --config-file "$nova_conf" db sync --local_cell
migrate neutron neutron-db-manage --config-file "$(conf neutron '[DEFAULT]' 'core_plugin = ml2' 'service_plugins = ovn-router' '[database]' "connection = $(url neutron)")" upgrade heads
migrate cinder cinder-manage --config-file "$(conf cinder '[database]' "connection = $(url cinder)")" db sync
migrate octavia octavia-db-manage --config-file "$(conf octavia '[database]' "connection = $(url octavia)")" upgrade head
migrate barbican barbican-manage db upgrade --db-url "$(url barbican)"

for d in $databases; do
    # Rows carry the time the migration ran: pin it to the build's epoch.
    mariadb-dump --socket="$sock" -uroot --skip-dump-date --skip-comments --single-transaction --routines --triggers "$d" \
        | sed -E "s/'[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?'/'$stamp\1'/g" > "$out/$d.sql"
done
mariadb-admin --socket="$sock" -uroot shutdown
wait $mysqld_pid || true

# Swift's rings: one device (d1, the box's `swift` volume) on loopback, one
# replica, 2^8 partitions: the same on every box, so they are made here (the
# seed fixes the partition assignment; Swift writes the gzip with a fixed
# mtime). The hash path prefix and suffix are each box's own (first boot).
(
    cd /etc/swift
    for ring in account:6202 container:6201 object:6200; do
        name=${ring%%:*}
        port=${ring#*:}
        swift-ring-builder "$name.builder" create 8 1 1 > /dev/null
        swift-ring-builder "$name.builder" add "r1z1-127.0.0.1:$port/d1" 100 > /dev/null
        # Exit status 1 is "warning" (e.g. a ring that cannot be balanced further).
        rc=0
        swift-ring-builder "$name.builder" rebalance --seed 1 > "$tmp/ring-$name.log" 2>&1 || rc=$?
        if [ $rc -gt 1 ] || [ ! -s "$name.ring.gz" ]; then
            echo "openstack.sh: building Swift's $name ring failed:" >&2
            cat "$tmp/ring-$name.log" >&2
            exit 1
        fi
    done
    rm -rf ./*.builder backups
    chown -R swift:swift /etc/swift
)
rm -rf "$tmp"
echo "openstack.sh: Swift's account, container and object rings in /etc/swift"

# 2. Per-machine state made by package scripts. (Swift's hash path
# prefix and suffix ship as "changeme": first boot writes the box's own.)
rm -rf /var/lib/mysql/* /var/lib/mysql/.[!.]* /var/lib/rabbitmq/.erlang.cookie /etc/openvswitch/conf.db /etc/openvswitch/system-id.conf /var/lib/ovn/*.db /var/lib/openstack-dashboard/secret-key/*
# open-iscsi's postinst names the initiator at random; a shared name would
# make every box the same initiator, and the image unreproducible. iscsid's
# start-up checks make a name from this on each box.
printf '## Written by ciab at build time: iscsid names this initiator on its first start.\nGenerateName=yes\n' > /etc/iscsi/initiatorname.iscsi
# Logs of the package scripts' service starts, with their times.
rm -rf /var/log/mysql/* /var/log/rabbitmq/* /var/log/keystone/* /var/log/glance/* /var/log/nova/* /var/log/neutron/* /var/log/cinder/* /var/log/apache2/* /var/log/openvswitch/* /var/log/ovn/* \
    /var/log/placement/* /var/log/openstack-dashboard/* /var/log/libvirt/* /var/log/dbconfig-common/* /var/log/fontconfig.log \
    /var/log/octavia/* /var/log/barbican/* /var/log/swift/*

# 3. Nothing runs before first boot has configured it.
for unit in mariadb rabbitmq-server epmd memcached keystone glance-api placement-api \
    nova-api nova-api-metadata nova-conductor nova-scheduler nova-novncproxy nova-serialproxy nova-spicehtml5proxy nova-compute \
    neutron-api neutron-rpc-server neutron-ovn-metadata-agent \
    ovn-central ovn-host ovn-northd ovn-controller ovn-ovsdb-server-nb ovn-ovsdb-server-sb openvswitch-switch ovs-vswitchd ovsdb-server \
    cinder-api cinder-scheduler cinder-volume cinder-backup tgt iscsid apache2 haproxy libvirtd libvirt-guests virtlogd \
    octavia-api octavia-driver-agent barbican-api rsync \
    $(cd /usr/lib/systemd/system && ls swift*.service | grep -v @ | sed 's/\.service$//'); do
    if [ -e "/usr/lib/systemd/system/$unit.service" ]; then
        systemctl mask --quiet "$unit.service"
    fi
done
# mariadb-extra: a unit activated by its socket listens only there, not on
# /run/mysqld/mysqld.sock where every service connects.
for socket in epmd libvirtd libvirtd-ro libvirtd-admin libvirtd-tcp libvirtd-tls virtlogd virtlogd-admin iscsid mariadb mariadb-extra; do
    if [ -e "/usr/lib/systemd/system/$socket.socket" ]; then
        systemctl mask --quiet "$socket.socket"
    fi
done
echo "openstack.sh: schemas in $out, services masked"
