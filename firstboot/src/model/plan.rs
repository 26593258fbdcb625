//! The sizing plan: how one box's RAM, CPUs and disk are split between the
//! host, the cloud's control plane, Nova's instances and the volumes.
//!
//! [`plan`] is a pure function of the discovered [`Hardware`], the profile and
//! the image size, so every number here can be checked in a unit test and
//! recomputed on the box. The result is plain serde data; the first-boot
//! service writes it out as JSON and renders the services' configuration from
//! it.
//!
//! Units: RAM in MiB, disk in GiB (1 GiB = 2^30 bytes), as in the option names
//! the numbers end up in.

use crate::model::hardware::{Disk, Hardware};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use anyhow::Result;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What the box is set up to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The appliance without a cloud: OS and ciab only.
    Tiny,
    /// A full cloud squeezed into a small machine or a VM (possibly TCG), for trying it out.
    Eval,
    /// The reference single-server cloud.
    Box,
    /// A full cloud on a smaller server at a remote site.
    Edge,
}

impl Profile {
    /// Every profile, smallest first.
    pub const ALL: [Profile; 4] = [Profile::Tiny, Profile::Eval, Profile::Box, Profile::Edge];

    /// The lowercase name used in site.toml, on the kernel command line and in the plan.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Tiny => "tiny",
            Profile::Eval => "eval",
            Profile::Box => "box",
            Profile::Edge => "edge",
        }
    }

    /// Whether the profile runs OpenStack and the Kubernetes-as-a-Service layer.
    pub fn has_cloud(self) -> bool {
        self != Profile::Tiny
    }

    /// The least hardware the profile is supported on.
    pub fn minimum(self) -> Minimum {
        match self {
            Profile::Tiny => Minimum { ram_gib: 1, cpus: 1, disk_gib: 4, kvm: false },
            Profile::Eval => Minimum { ram_gib: 12, cpus: 4, disk_gib: 64, kvm: false },
            Profile::Box => Minimum { ram_gib: 64, cpus: 8, disk_gib: 500, kvm: true },
            Profile::Edge => Minimum { ram_gib: 32, cpus: 8, disk_gib: 250, kvm: true },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown profile `{s}`; expected tiny, eval, box or edge"))
    }
}

/// The least hardware a profile is supported on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minimum {
    /// Installed RAM in GiB (see [`ram_accepted`] for how MemTotal is compared).
    pub ram_gib: u64,
    pub cpus: u32,
    /// Size of the target disk in GiB.
    pub disk_gib: u64,
    /// `/dev/kvm` must exist: production profiles are useless under TCG.
    pub kvm: bool,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The box lacks RAM, CPUs, disk or KVM for the profile; `missing` has one entry per shortfall.
    #[error("this box is below the minimum for profile {profile}: {}", missing.join("; "))]
    BelowMinimum { profile: Profile, missing: Vec<String> },
    /// The disk is big enough on paper, but the image leaves too little of it.
    #[error("disk {disk} has {free_gib} GiB free after the image ({}); profile {profile} needs {needed_gib} GiB for its volumes", gib_1(*image_bytes))]
    DiskTooSmall { profile: Profile, disk: String, free_gib: u64, image_bytes: u64, needed_gib: u64 },
}

/// How the box's resources are split. Serialised as JSON by the first-boot service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub profile: Profile,
    /// MemTotal in MiB: what the kernel can hand out, a little below installed RAM.
    pub memory_mib: u64,
    /// Logical CPUs.
    pub cpus: u32,
    /// How guests will run.
    pub virtualization: Virtualization,
    /// Kept for the OS and ciab itself.
    pub host_reserve: HostReserve,
    /// OpenStack and KaaS services; `None` for profile tiny.
    pub control_plane: Option<ControlPlane>,
    /// nova-compute's view of the box; `None` for profile tiny.
    pub nova: Option<Nova>,
    pub storage: Storage,
}

/// KVM when `/dev/kvm` exists, else QEMU's software emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Virtualization {
    Kvm,
    Tcg,
}

/// RAM and CPUs for the OS and ciab (systemd, journald, sshd, chrony, the ciab agents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReserve {
    pub ram_mib: u64,
    pub cpus: u32,
}

/// Budgets of the cloud's own services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlane {
    pub mariadb: Mariadb,
    pub rabbitmq: Rabbitmq,
    pub memcached: Memcached,
    /// Worker processes per service (`workers`, `api_workers`, WSGI processes).
    pub workers: Workers,
    /// oslo.db `max_pool_size` for every service: max_connections is derived from it.
    pub db_max_pool_size: u32,
    /// oslo.db `max_overflow` for every service.
    pub db_max_overflow: u32,
    /// The OpenStack services' processes: API workers plus the one-per-box
    /// daemons (nova-compute, novncproxy, cinder-scheduler/-volume, the OVN
    /// metadata agent and OVN/OVS itself).
    pub services_ram_mib: u64,
    /// The KaaS management layer (k3s, Cluster API and its OpenStack provider).
    pub kaas_ram_mib: u64,
    /// Sum of every budget above: the control plane's share of RAM.
    pub ram_mib: u64,
    /// CPUs kept out of Nova's inventory for the control plane.
    pub cpus: u32,
}

/// MariaDB settings and the RAM they add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mariadb {
    /// `innodb_buffer_pool_size`, a multiple of the 128 MiB chunk size.
    pub innodb_buffer_pool_mib: u64,
    pub max_connections: u32,
    /// Buffer pool + server overhead + per-connection memory.
    pub ram_mib: u64,
}

/// RabbitMQ settings and RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rabbitmq {
    /// `vm_memory_high_watermark.absolute`: publishers are blocked above it.
    pub memory_high_watermark_mib: u64,
    /// What the Erlang VM may really use (it overshoots the watermark during GC).
    pub ram_mib: u64,
}

/// memcached settings and RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memcached {
    /// `-m`: memory for items.
    pub memory_mib: u64,
    /// Items plus hash table and connection buffers.
    pub ram_mib: u64,
}

/// Worker process counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workers {
    pub keystone: u32,
    pub glance: u32,
    pub nova_api: u32,
    /// Nova's metadata API, which the OVN metadata agent proxies guests to.
    pub nova_metadata: u32,
    pub nova_conductor: u32,
    pub nova_scheduler: u32,
    pub placement: u32,
    pub neutron_server: u32,
    pub cinder_api: u32,
    /// Horizon's WSGI processes.
    pub horizon: u32,
    pub octavia_api: u32,
    pub barbican_api: u32,
    /// Swift's proxy, and each of its account, container and object servers.
    pub swift_proxy: u32,
    pub swift_storage: u32,
}

/// nova-compute settings and what instances get.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Nova {
    /// `reserved_host_memory_mb`: host + control plane + QEMU overhead.
    pub reserved_host_memory_mb: u64,
    /// `reserved_host_cpus`: host + control plane CPUs.
    pub reserved_host_cpus: u32,
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    /// Allowance for the QEMU processes' own memory beyond guest RAM.
    pub guest_overhead_mib: u64,
    /// RAM instances can be given: (memory − reserved) × ram_allocation_ratio.
    pub instance_ram_mib: u64,
    /// vCPUs instances can be given: (cpus − reserved) × cpu_allocation_ratio.
    pub instance_vcpus: u32,
    /// Disk instances can be given: the nova-instances volume × disk_allocation_ratio.
    pub instance_disk_gib: u64,
}

/// Where the cloud's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// The disk the volume group goes on (kernel name, e.g. `nvme0n1`).
    pub disk: String,
    pub disk_bytes: u64,
    /// What the image occupies at the start of the disk.
    pub image_bytes: u64,
    /// Size of the volume group in the space after the image.
    pub vg_gib: u64,
    /// Left unallocated in the volume group (~5%) for snapshots and growth.
    pub vg_unallocated_gib: u64,
    /// Logical volumes of the cloud; `None` for profile tiny.
    pub volumes: Option<Volumes>,
    /// The appliance's own data volume (`/srv/ciab`) on a box without a
    /// cloud, where nothing else claims the space; 0 for the cloud profiles,
    /// whose data lives in the cloud's volumes.
    #[serde(default)]
    pub appliance_gib: u64,
    /// Other non-removable disks, left untouched for the operator.
    pub unused_disks: Vec<String>,
}

/// Logical volume sizes in GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volumes {
    /// `/var/lib/mysql`.
    pub mariadb_gib: u64,
    /// `/var/lib/glance/images`.
    pub glance_gib: u64,
    /// `/var/lib/nova/instances`.
    pub nova_instances_gib: u64,
    /// Thin pool cinder's LVM driver carves volumes from.
    pub cinder_gib: u64,
    /// Swift's one device, `/srv/node/d1`: objects, S3 buckets and volume backups.
    pub swift_gib: u64,
    /// The KaaS layer's data (k3s, its datastore, container images).
    pub kaas_gib: u64,
}

impl Volumes {
    /// Sum of all volumes.
    pub fn total_gib(&self) -> u64 {
        self.mariadb_gib + self.glance_gib + self.nova_instances_gib + self.cinder_gib + self.swift_gib + self.kaas_gib
    }
}

// --- Constants, with where they come from -------------------------------------

/// Resident memory of one worker process, in MiB: Debian's Python services
/// after warm-up under light load, rounded up so a busy box does not OOM.
const KEYSTONE_MIB: u64 = 150;
const GLANCE_MIB: u64 = 200;
const NOVA_API_MIB: u64 = 180;
const NOVA_METADATA_MIB: u64 = 150;
const NOVA_CONDUCTOR_MIB: u64 = 150;
const NOVA_SCHEDULER_MIB: u64 = 150;
const PLACEMENT_MIB: u64 = 120;
const NEUTRON_SERVER_MIB: u64 = 250;
const CINDER_API_MIB: u64 = 150;
const HORIZON_MIB: u64 = 200;
const OCTAVIA_API_MIB: u64 = 180;
const BARBICAN_API_MIB: u64 = 150;
/// Swift's eventlet servers are lighter than the WSGI APIs.
const SWIFT_PROXY_MIB: u64 = 100;
const SWIFT_STORAGE_MIB: u64 = 60;
/// Processes that run once per box whatever the worker count: nova-compute
/// 300, nova-novncproxy 100, cinder-scheduler 150, cinder-volume 200,
/// cinder-backup 150, octavia-driver-agent 150, neutron-ovn-metadata-agent
/// 150, and OVN/OVS (NB 150 + SB 200 ovsdb-server, ovn-northd 100,
/// ovs-vswitchd 200, ovn-controller 150 = 800).
const SINGLETONS_MIB: u64 = 300 + 100 + 150 + 200 + 150 + 150 + 150 + 800;
/// Singletons holding database connections: cinder-scheduler,
/// cinder-volume, cinder-backup, octavia-driver-agent.
const DB_SINGLETONS: u32 = 4;
/// Every service is configured with this oslo.db pool, so the database can be
/// sized for the worst case instead of oslo.db's default overflow of 50.
const DB_MAX_POOL_SIZE: u32 = 5;
const DB_MAX_OVERFLOW: u32 = 5;
/// Connections for the mysql client, backups and monitoring on top of the services.
const DB_SPARE_CONNECTIONS: u32 = 50;
/// MariaDB's own memory besides the buffer pool (dictionary, log buffer, Aria
/// page cache, thread cache).
const MARIADB_BASE_MIB: u64 = 256;
/// An idle connection's thread stack and network buffers; sort and join
/// buffers are only allocated by running queries, which are few at once here.
const MARIADB_PER_CONNECTION_MIB: u64 = 1;
/// The smallest share of RAM worth starting an instance in.
const MIN_INSTANCE_RAM_MIB: u64 = 1024;
/// GPT backup header, partition alignment and LVM metadata after the image.
const DISK_OVERHEAD_BYTES: u64 = 4 * MIB;

/// Makes the plan for `hw` under `profile`, with the image occupying the first
/// `image_bytes` of the target disk.
pub fn plan(hw: &Hardware, profile: Profile, image_bytes: u64) -> Result<Plan, PlanError> {
    let min = profile.minimum();
    let memory_mib = hw.memory_bytes / MIB;
    let target = target_disk(&hw.disks);

    let mut missing = Vec::new();
    if !ram_accepted(hw.memory_bytes, min.ram_gib) {
        missing.push(format!("RAM {} < {} GiB", gib_below(hw.memory_bytes, min.ram_gib), min.ram_gib));
    }
    if hw.cpus < min.cpus {
        missing.push(format!("CPUs {} < {}", hw.cpus, min.cpus));
    }
    match target {
        None => missing.push(format!("no disk (needs {} GiB)", min.disk_gib)),
        Some(d) if d.size_bytes < min.disk_gib * GIB => {
            missing.push(format!("disk {} {} < {} GiB", d.name, gib_below(d.size_bytes, min.disk_gib), min.disk_gib))
        }
        Some(_) => {}
    }
    if min.kvm && !hw.kvm_device {
        missing.push("no KVM (/dev/kvm is missing: enable VT-x/AMD-V in the firmware setup, or use profile eval)".into());
    }
    let Some(target) = target.filter(|_| missing.is_empty()) else {
        return Err(PlanError::BelowMinimum { profile, missing });
    };

    let virtualization = if hw.kvm_device { Virtualization::Kvm } else { Virtualization::Tcg };
    let host_reserve = host_reserve(profile, memory_mib, hw.cpus);
    let control_plane = profile.has_cloud().then(|| control_plane(profile, virtualization, memory_mib, hw.cpus));
    let storage = storage(profile, hw, target, image_bytes)?;
    let nova = match (&control_plane, &storage.volumes) {
        (Some(cp), Some(volumes)) => {
            let nova = nova(profile, virtualization, memory_mib, hw.cpus, &host_reserve, cp, volumes);
            if nova.instance_ram_mib < MIN_INSTANCE_RAM_MIB {
                return Err(PlanError::BelowMinimum {
                    profile,
                    missing: vec![format!(
                        "RAM left for instances {} < 1 GiB",
                        gib_below(nova.instance_ram_mib * MIB, 1)
                    )],
                });
            }
            Some(nova)
        }
        _ => None,
    };
    Ok(Plan {
        profile,
        memory_mib,
        cpus: hw.cpus,
        virtualization,
        host_reserve,
        control_plane,
        nova,
        storage,
    })
}

/// Whether MemTotal `memory_bytes` counts as `min_gib` of installed RAM.
///
/// MemTotal never reaches the installed size: firmware, the kernel image,
/// crashkernel and integrated graphics take a fixed ~100 MiB plus up to ~5%.
/// A box with exactly the minimum installed must pass, so MemTotal may fall
/// short by 6% or 128 MiB, whichever is more.
pub fn ram_accepted(memory_bytes: u64, min_gib: u64) -> bool {
    let min_mib = min_gib * 1024;
    let slack = (min_mib * 6 / 100).max(128);
    memory_bytes >= min_mib.saturating_sub(slack) * MIB
}

/// The disk holding the running root; failing that, the largest
/// non-removable disk, since a USB stick is no place for a cloud's data.
fn target_disk(disks: &[Disk]) -> Option<&Disk> {
    disks.iter().find(|d| d.holds_root).or_else(|| {
        disks
            .iter()
            .filter(|d| !d.removable)
            // Largest wins; on a tie the first by name, so the choice is stable.
            .max_by(|a, b| a.size_bytes.cmp(&b.size_bytes).then(b.name.cmp(&a.name)))
    })
}

fn host_reserve(profile: Profile, memory_mib: u64, cpus: u32) -> HostReserve {
    // A fixed base for systemd, journald, sshd and the ciab agents, plus a
    // page-cache floor so the Python services' code and the database files
    // stay cached; 1/64 of RAM on top covers kernel slab and the guests' page
    // tables, which grow with the RAM handed out.
    let base = if profile.has_cloud() { 1024 } else { 512 };
    let ram_mib = round_up(base + memory_mib / 64, 256).min(memory_mib);
    // One core keeps the OS responsive; big boxes get two so interrupts and
    // vhost threads do not compete with sshd.
    let cpus = if profile.has_cloud() && cpus > 16 { 2 } else { 1 };
    HostReserve { ram_mib, cpus }
}

fn control_plane(profile: Profile, virt: Virtualization, memory_mib: u64, cpus: u32) -> ControlPlane {
    // Eval boxes and TCG guests have little RAM and CPU to spare and a single
    // user: one process per service answers them. Elsewhere one process per 8
    // CPUs, 2 to 4: a single box serves one team's API traffic, and more
    // workers only cost RAM (each is a full Python interpreter).
    let w = if profile == Profile::Eval || virt == Virtualization::Tcg { 1 } else { (cpus / 8).clamp(2, 4) };
    // Glance and cinder-api mostly wait on I/O, the scheduler on one host has
    // little to choose from, and Horizon has few users: half as many.
    let half = (w / 2).max(1);
    let workers = Workers {
        // Every other service's tokens are checked by Keystone, and first
        // boot registers the cloud in it two calls at a time: a second
        // process costs little (the app is loaded once, then forked).
        keystone: w.max(2),
        glance: half,
        nova_api: w,
        nova_metadata: half,
        nova_conductor: w,
        nova_scheduler: half,
        placement: w,
        neutron_server: w,
        cinder_api: half,
        horizon: half,
        octavia_api: half,
        barbican_api: half,
        swift_proxy: half,
        swift_storage: half,
    };
    let n = |c: u32| u64::from(c);
    let services_ram_mib = n(workers.keystone) * KEYSTONE_MIB
        + n(workers.glance) * GLANCE_MIB
        + n(workers.nova_api) * NOVA_API_MIB
        + n(workers.nova_metadata) * NOVA_METADATA_MIB
        + n(workers.nova_conductor) * NOVA_CONDUCTOR_MIB
        + n(workers.nova_scheduler) * NOVA_SCHEDULER_MIB
        + n(workers.placement) * PLACEMENT_MIB
        + n(workers.neutron_server) * NEUTRON_SERVER_MIB
        + n(workers.cinder_api) * CINDER_API_MIB
        + n(workers.horizon) * HORIZON_MIB
        + n(workers.octavia_api) * OCTAVIA_API_MIB
        + n(workers.barbican_api) * BARBICAN_API_MIB
        + n(workers.swift_proxy) * SWIFT_PROXY_MIB
        + 3 * n(workers.swift_storage) * SWIFT_STORAGE_MIB
        + SINGLETONS_MIB;

    // Every process that talks to the database can hold pool + overflow
    // connections at once; max_connections must cover all of them, or
    // services fail with "Too many connections" under load.
    let db_processes = workers.keystone
        + workers.glance
        + workers.nova_api
        + workers.nova_metadata
        + workers.nova_conductor
        + workers.nova_scheduler
        + workers.placement
        + workers.neutron_server
        + workers.cinder_api
        + workers.octavia_api
        + workers.barbican_api
        + DB_SINGLETONS;
    let max_connections = DB_SPARE_CONNECTIONS + db_processes * (DB_MAX_POOL_SIZE + DB_MAX_OVERFLOW);
    // A one-box cloud's databases stay well under 2 GiB, so a buffer pool of
    // 1/64 of RAM (256 MiB to 2 GiB) holds all of them hot; more would be
    // RAM taken from instances for nothing.
    let innodb_buffer_pool_mib = (memory_mib / 64 / 128 * 128).clamp(256, 2048);
    let mariadb = Mariadb {
        innodb_buffer_pool_mib,
        max_connections,
        ram_mib: innodb_buffer_pool_mib + MARIADB_BASE_MIB + u64::from(max_connections) * MARIADB_PER_CONNECTION_MIB,
    };

    // OpenStack's queues are nearly always empty; the watermark only has to
    // absorb bursts (a mass boot, a restart of nova-compute). Erlang's
    // generational GC can briefly add half again, so the budget is 1.5×.
    let watermark = (memory_mib / 128 / 64 * 64).clamp(256, 1024);
    let rabbitmq = Rabbitmq { memory_high_watermark_mib: watermark, ram_mib: watermark * 3 / 2 };

    // memcached holds Keystone's token validations and Horizon's sessions:
    // a few MiB in practice; 1/256 of RAM (64-512 MiB) leaves room to spare.
    // The hash table and connection buffers add ~32 MiB.
    let memcached_mib = (memory_mib / 256 / 64 * 64).clamp(64, 512);
    let memcached = Memcached { memory_mib: memcached_mib, ram_mib: memcached_mib + 32 };

    // k3s' server alone wants ~512 MiB; Cluster API, its OpenStack provider
    // and cert-manager add about as much, and a box running tenants' clusters
    // reconciles more objects.
    let kaas_ram_mib = match profile {
        Profile::Tiny | Profile::Eval => 1024,
        Profile::Edge => 1536,
        Profile::Box => 2048,
    };

    let ram_mib = mariadb.ram_mib + rabbitmq.ram_mib + memcached.ram_mib + services_ram_mib + kaas_ram_mib;
    // Eval's single workers rarely use a whole core together; elsewhere one
    // core per 8 keeps API latency low while the rest go to instances.
    let cp_cpus = if profile == Profile::Eval { 1 } else { (cpus / 8).max(2) };
    ControlPlane {
        mariadb,
        rabbitmq,
        memcached,
        workers,
        db_max_pool_size: DB_MAX_POOL_SIZE,
        db_max_overflow: DB_MAX_OVERFLOW,
        services_ram_mib,
        kaas_ram_mib,
        ram_mib,
        cpus: cp_cpus,
    }
}

fn nova(
    profile: Profile,
    virt: Virtualization,
    memory_mib: u64,
    cpus: u32,
    host: &HostReserve,
    cp: &ControlPlane,
    volumes: &Volumes,
) -> Nova {
    let pool = memory_mib.saturating_sub(host.ram_mib + cp.ram_mib);
    // Each QEMU process needs memory of its own beyond the guest's RAM (device
    // emulation, virtio rings, the guest's page tables): about 3% of guest
    // RAM for common flavors, so 1/32 of the pool is set aside.
    let guest_overhead_mib = round_up(pool / 32, 256).min(pool);
    // No swap on the box and the control plane shares it: overcommitted RAM
    // ends with the OOM killer picking a guest or MariaDB. So RAM is never
    // overcommitted and Nova gets exactly the rest.
    let ram_allocation_ratio = 1.0;
    let instance_ram_mib = pool - guest_overhead_mib;
    let reserved_host_memory_mb = memory_mib - instance_ram_mib;

    let reserved_host_cpus = host.cpus + cp.cpus;
    // Under TCG every busy vCPU is a host thread at 100% running ~10× slower:
    // overcommitting would starve the control plane. With KVM, idle guests
    // make 4:1 (Nova's default) safe; edge sites run fewer, steadier and more
    // latency-sensitive workloads, so 2:1.
    let cpu_allocation_ratio = match (virt, profile) {
        (Virtualization::Tcg, _) => 1.0,
        (_, Profile::Edge) => 2.0,
        _ => 4.0,
    };
    let instance_vcpus = (f64::from(cpus.saturating_sub(reserved_host_cpus)) * cpu_allocation_ratio) as u32;
    // Instance disks are thin qcow2 overlays. Eval guests are short-lived test
    // VMs that rarely fill their flavor's disk, so 2:1. On a production box a
    // full instances volume pauses every guest at once, so no overcommit.
    let disk_allocation_ratio = if profile == Profile::Eval { 2.0 } else { 1.0 };
    let instance_disk_gib = (volumes.nova_instances_gib as f64 * disk_allocation_ratio) as u64;
    Nova {
        reserved_host_memory_mb,
        reserved_host_cpus,
        cpu_allocation_ratio,
        ram_allocation_ratio,
        disk_allocation_ratio,
        guest_overhead_mib,
        instance_ram_mib,
        instance_vcpus,
        instance_disk_gib,
    }
}

/// Least sizes of the logical volumes, GiB: a database of a one-box cloud,
/// a handful of cloud and Kubernetes node images, a few small instances and
/// volumes, and k3s with its images. Their sum fits the eval minimum disk
/// (64 GiB) after an image of up to 10 GiB with 5% of the VG left free.
const MIN_MARIADB_GIB: u64 = 4;
const MIN_KAAS_GIB: u64 = 8;
const MIN_GLANCE_GIB: u64 = 8;
/// Placement caps one instance's root disk at the instances volume's size
/// (its `max_unit`; the allocation ratio does not raise it): scs-0103's
/// SCS-2V-4-20s must fit, its 20 GB plus ext4's overhead (a 16 GiB volume
/// reported 15 and the server found "no valid host").
const MIN_NOVA_GIB: u64 = 22;
const MIN_CINDER_GIB: u64 = 6;
/// Room for a few volume backups and S3 objects on the smallest box.
const MIN_SWIFT_GIB: u64 = 2;

fn storage(profile: Profile, hw: &Hardware, target: &Disk, image_bytes: u64) -> Result<Storage, PlanError> {
    let free_bytes = target.size_bytes.saturating_sub(image_bytes).saturating_sub(DISK_OVERHEAD_BYTES);
    // Whole GiB, rounded down, so the LVs are sure to fit LVM's 4 MiB extents.
    let vg_gib = free_bytes / GIB;
    // ~5% stays unallocated: room for LVM snapshots during upgrades and for
    // growing whichever volume fills first.
    let usable = vg_gib * 95 / 100;
    let needed = if profile.has_cloud() {
        MIN_MARIADB_GIB + MIN_KAAS_GIB + MIN_GLANCE_GIB + MIN_NOVA_GIB + MIN_CINDER_GIB + MIN_SWIFT_GIB
    } else {
        0
    };
    if usable < needed {
        return Err(PlanError::DiskTooSmall {
            profile,
            disk: target.name.clone(),
            free_gib: vg_gib,
            image_bytes,
            needed_gib: needed,
        });
    }
    let volumes = profile.has_cloud().then(|| {
        // The database and KaaS grow slowly and are capped: 1% and 3% of the
        // space, so big disks go to the tenants' data.
        let mariadb_gib = (usable / 100).clamp(MIN_MARIADB_GIB, 20);
        let kaas_gib = (usable * 3 / 100).clamp(MIN_KAAS_GIB, 64);
        // The rest: images 1/5, instances 2/5, object storage (S3 and
        // volume backups) 1/10 and volumes the remaining 3/10, since
        // tenants' data lives in instance disks and volumes, and images are
        // shared. Cinder takes the remainder, so rounding loses nothing.
        let rest = usable - mariadb_gib - kaas_gib;
        let glance_gib = (rest / 5).max(MIN_GLANCE_GIB);
        let nova_instances_gib = (rest * 2 / 5).max(MIN_NOVA_GIB);
        let swift_gib = (rest / 10).max(MIN_SWIFT_GIB);
        let cinder_gib = rest - glance_gib - nova_instances_gib - swift_gib;
        Volumes { mariadb_gib, glance_gib, nova_instances_gib, cinder_gib, swift_gib, kaas_gib }
    });
    // Without a cloud, a quarter of the space (1 to 16 GiB) becomes one
    // plain volume; the rest stays in the VG for whatever the operator adds.
    let appliance_gib = if profile.has_cloud() || usable == 0 { 0 } else { (usable / 4).clamp(1, 16) };
    let allocated = volumes.map_or(0, |v| v.total_gib()) + appliance_gib;
    Ok(Storage {
        disk: target.name.clone(),
        disk_bytes: target.size_bytes,
        image_bytes,
        vg_gib,
        vg_unallocated_gib: vg_gib - allocated,
        volumes,
        appliance_gib,
        unused_disks: hw
            .disks
            .iter()
            .filter(|d| !d.removable && d.name != target.name)
            .map(|d| d.name.clone())
            .collect(),
    })
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// Bytes as GiB with one decimal, rounded to nearest.
fn gib_1(bytes: u64) -> String {
    tenths_gib(((bytes as u128 * 10 + GIB as u128 / 2) / GIB as u128) as u64)
}

/// Like [`gib_1`] for a value below `limit_gib`, which it never displays as
/// reaching: 59.97 GiB reads "59.9 GiB < 60 GiB", not "60.0 GiB < 60 GiB".
fn gib_below(bytes: u64, limit_gib: u64) -> String {
    let nearest = ((bytes as u128 * 10 + GIB as u128 / 2) / GIB as u128) as u64;
    tenths_gib(nearest.min((limit_gib * 10).saturating_sub(1)))
}

fn tenths_gib(tenths: u64) -> String {
    format!("{}.{} GiB", tenths / 10, tenths % 10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::hardware::{Firmware, Nic};

    const KIB: u64 = 1024;

    fn disk(name: &str, size_bytes: u64, holds_root: bool) -> Disk {
        Disk { name: name.into(), size_bytes, rotational: false, removable: false, holds_root }
    }

    fn hw(memtotal_kib: u64, cpus: u32, kvm: bool, disks: Vec<Disk>) -> Hardware {
        Hardware {
            cpus,
            memory_bytes: memtotal_kib * KIB,
            firmware: Firmware::Uefi,
            kvm_device: kvm,
            disks,
            nics: vec![Nic { name: "enp1s0".into(), mac: "52:54:00:12:34:56".into(), carrier: true }],
        }
    }

    /// 128 GiB installed (MemTotal as such a server reports it), 32 CPUs,
    /// two 1.92 TB NVMe drives, root on the first.
    fn reference_box() -> Hardware {
        let nvme = 3_750_748_848 * 512; // 1.92 TB
        hw(131_895_608, 32, true, vec![disk("nvme0n1", nvme, true), disk("nvme1n1", nvme, false)])
    }

    /// `qemu -m 12G -smp 4` with a 100 GiB virtio disk, no KVM.
    fn eval_vm() -> Hardware {
        hw(12_245_676, 4, false, vec![disk("vda", 100 * GIB, true)])
    }

    /// An 8 GiB laptop (integrated graphics take their share), 2 CPUs.
    fn laptop() -> Hardware {
        hw(7_968_432, 2, true, vec![disk("nvme0n1", 256_060_514_304, true)])
    }

    /// A 1 GiB, 1 CPU VM with an 8 GiB disk.
    fn tiny_vm() -> Hardware {
        hw(1_004_508, 1, false, vec![disk("vda", 8 * GIB, true)])
    }

    const IMAGE: u64 = 6 * GIB;

    fn check_sums(p: &Plan) {
        let total = p.host_reserve.ram_mib
            + p.control_plane.map_or(0, |c| c.ram_mib)
            + p.nova.map_or(0, |n| n.guest_overhead_mib + n.instance_ram_mib);
        assert!(total <= p.memory_mib, "{total} MiB planned > {} MiB", p.memory_mib);
        if let (Some(cp), Some(n)) = (p.control_plane, p.nova) {
            let c = cp.mariadb.ram_mib + cp.rabbitmq.ram_mib + cp.memcached.ram_mib + cp.services_ram_mib + cp.kaas_ram_mib;
            assert_eq!(c, cp.ram_mib);
            assert_eq!(p.host_reserve.ram_mib + cp.ram_mib + n.guest_overhead_mib, n.reserved_host_memory_mb);
            assert_eq!(n.reserved_host_memory_mb + n.instance_ram_mib, p.memory_mib);
            assert!(n.reserved_host_cpus < p.cpus);
        }
        let s = &p.storage;
        let lvs = s.volumes.map_or(0, |v| v.total_gib()) + s.appliance_gib;
        assert!(lvs + s.vg_unallocated_gib == s.vg_gib);
        assert!(lvs * GIB + s.image_bytes <= s.disk_bytes);
        assert!(s.vg_unallocated_gib * 100 >= s.vg_gib * 5, "at least 5% of the VG stays free");
    }

    fn round_trip(p: &Plan) {
        let json = serde_json::to_string_pretty(p).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, p);
    }

    #[test]
    fn reference_box_gets_a_few_workers_and_most_ram_for_nova() {
        let p = plan(&reference_box(), Profile::Box, IMAGE).unwrap();
        check_sums(&p);
        round_trip(&p);
        assert_eq!(p.memory_mib, 128_804);
        assert_eq!(p.virtualization, Virtualization::Kvm);
        assert_eq!(p.host_reserve, HostReserve { ram_mib: 3072, cpus: 2 });
        let cp = p.control_plane.unwrap();
        assert_eq!(
            cp.workers,
            Workers {
                keystone: 4,
                glance: 2,
                nova_api: 4,
                nova_metadata: 2,
                nova_conductor: 4,
                nova_scheduler: 2,
                placement: 4,
                neutron_server: 4,
                cinder_api: 2,
                horizon: 2,
                octavia_api: 2,
                barbican_api: 2,
                swift_proxy: 2,
                swift_storage: 2
            }
        );
        assert_eq!(cp.mariadb, Mariadb { innodb_buffer_pool_mib: 1920, max_connections: 410, ram_mib: 2586 });
        assert_eq!(cp.rabbitmq, Rabbitmq { memory_high_watermark_mib: 960, ram_mib: 1440 });
        assert_eq!(cp.memcached, Memcached { memory_mib: 448, ram_mib: 480 });
        assert_eq!(cp.services_ram_mib, 8320);
        assert_eq!(cp.kaas_ram_mib, 2048);
        assert_eq!(cp.ram_mib, 14_874);
        assert!(cp.ram_mib <= 16 * 1024, "the control plane fits in 16 GiB");
        assert_eq!(cp.cpus, 4);
        let n = p.nova.unwrap();
        assert_eq!(n.reserved_host_memory_mb, 21_530);
        assert_eq!(n.guest_overhead_mib, 3584);
        assert_eq!(n.instance_ram_mib, 107_274);
        assert_eq!(n.reserved_host_cpus, 6);
        assert_eq!((n.cpu_allocation_ratio, n.ram_allocation_ratio, n.disk_allocation_ratio), (4.0, 1.0, 1.0));
        assert_eq!(n.instance_vcpus, 104);
        let s = &p.storage;
        assert_eq!(s.disk, "nvme0n1");
        assert_eq!(s.unused_disks, vec!["nvme1n1".to_owned()]);
        assert_eq!(s.vg_gib, 1782);
        assert_eq!(
            s.volumes,
            Some(Volumes { mariadb_gib: 16, glance_gib: 325, nova_instances_gib: 650, cinder_gib: 489, swift_gib: 162, kaas_gib: 50 })
        );
        assert_eq!(s.vg_unallocated_gib, 90);
        assert_eq!(n.instance_disk_gib, 650);
    }

    #[test]
    fn eval_vm_under_tcg_gets_one_worker_each_but_keystone_two() {
        let p = plan(&eval_vm(), Profile::Eval, IMAGE).unwrap();
        check_sums(&p);
        round_trip(&p);
        assert_eq!(p.memory_mib, 11_958);
        assert_eq!(p.virtualization, Virtualization::Tcg);
        assert_eq!(p.host_reserve, HostReserve { ram_mib: 1280, cpus: 1 });
        let cp = p.control_plane.unwrap();
        let w = cp.workers;
        assert_eq!(
            [w.keystone, w.glance, w.nova_api, w.nova_metadata, w.nova_conductor, w.nova_scheduler, w.placement, w.neutron_server, w.cinder_api, w.horizon, w.octavia_api, w.barbican_api, w.swift_proxy, w.swift_storage],
            [2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        );
        assert_eq!(cp.mariadb, Mariadb { innodb_buffer_pool_mib: 256, max_connections: 210, ram_mib: 722 });
        assert_eq!(cp.rabbitmq, Rabbitmq { memory_high_watermark_mib: 256, ram_mib: 384 });
        assert_eq!(cp.memcached, Memcached { memory_mib: 64, ram_mib: 96 });
        assert_eq!(cp.services_ram_mib, 4460);
        assert_eq!(cp.ram_mib, 6686);
        assert_eq!(cp.cpus, 1);
        let n = p.nova.unwrap();
        assert_eq!(n.reserved_host_memory_mb, 8222);
        assert_eq!(n.instance_ram_mib, 3736);
        assert_eq!(n.reserved_host_cpus, 2);
        assert_eq!((n.cpu_allocation_ratio, n.ram_allocation_ratio, n.disk_allocation_ratio), (1.0, 1.0, 2.0));
        assert_eq!(n.instance_vcpus, 2);
        let s = &p.storage;
        assert_eq!((s.disk.as_str(), s.vg_gib), ("vda", 93));
        assert_eq!(
            s.volumes,
            Some(Volumes { mariadb_gib: 4, glance_gib: 15, nova_instances_gib: 30, cinder_gib: 24, swift_gib: 7, kaas_gib: 8 })
        );
        assert_eq!(n.instance_disk_gib, 60);
    }

    #[test]
    fn eval_on_an_8_gib_laptop_is_refused_with_every_shortfall() {
        let err = plan(&laptop(), Profile::Eval, IMAGE).unwrap_err();
        assert_eq!(err.to_string(), "this box is below the minimum for profile eval: RAM 7.6 GiB < 12 GiB; CPUs 2 < 4");
        assert_eq!(
            err,
            PlanError::BelowMinimum { profile: Profile::Eval, missing: vec!["RAM 7.6 GiB < 12 GiB".into(), "CPUs 2 < 4".into()] }
        );
    }

    #[test]
    fn tiny_plans_no_cloud() {
        let p = plan(&tiny_vm(), Profile::Tiny, 2 * GIB).unwrap();
        check_sums(&p);
        round_trip(&p);
        assert_eq!(p.memory_mib, 980);
        assert_eq!(p.host_reserve, HostReserve { ram_mib: 768, cpus: 1 });
        assert_eq!((p.control_plane, p.nova), (None, None));
        assert_eq!((p.storage.disk.as_str(), p.storage.vg_gib, p.storage.volumes), ("vda", 5, None));
        // usable = 95% of 5 GiB = 4 GiB; a quarter of it is the appliance volume.
        assert_eq!((p.storage.appliance_gib, p.storage.vg_unallocated_gib), (1, 4));
    }

    #[test]
    fn production_profiles_need_kvm_and_list_every_shortfall() {
        let err = plan(&eval_vm(), Profile::Box, IMAGE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this box is below the minimum for profile box: RAM 11.7 GiB < 64 GiB; CPUs 4 < 8; \
             disk vda 100.0 GiB < 500 GiB; no KVM (/dev/kvm is missing: enable VT-x/AMD-V in the firmware setup, or use profile eval)"
        );
        let mut no_disk = tiny_vm();
        no_disk.disks.clear();
        assert_eq!(
            plan(&no_disk, Profile::Tiny, 0).unwrap_err().to_string(),
            "this box is below the minimum for profile tiny: no disk (needs 4 GiB)"
        );
    }

    #[test]
    fn an_image_that_leaves_too_little_room_is_refused() {
        let mut vm = eval_vm();
        vm.disks[0].size_bytes = 64 * GIB;
        assert!(plan(&vm, Profile::Eval, 10 * GIB).is_ok(), "the eval minimum fits a 10 GiB image");
        let err = plan(&vm, Profile::Eval, 20 * GIB).unwrap_err();
        assert_eq!(err.to_string(), "disk vda has 43 GiB free after the image (20.0 GiB); profile eval needs 50 GiB for its volumes");
    }

    #[test]
    fn the_minimum_ram_passes_although_memtotal_is_below_it() {
        // A 12 GiB box whose firmware keeps 5%.
        assert!(ram_accepted(12 * GIB * 95 / 100, 12));
        assert!(!ram_accepted(12 * GIB * 93 / 100, 12));
        // A 1 GiB VM reports ~980 MiB.
        assert!(ram_accepted(900 * MIB, 1));
        assert!(!ram_accepted(800 * MIB, 1));
    }

    #[test]
    fn the_smallest_boxes_of_each_cloud_profile_still_leave_room_for_instances() {
        for profile in [Profile::Eval, Profile::Box, Profile::Edge] {
            let min = profile.minimum();
            // Just enough RAM to pass, the least CPUs and disk.
            let mem_kib = (min.ram_gib * 1024 - (min.ram_gib * 1024 * 6 / 100).max(128)) * 1024;
            let box_ = hw(mem_kib, min.cpus, true, vec![disk("sda", min.disk_gib * GIB, false)]);
            let p = plan(&box_, profile, 10 * GIB).unwrap_or_else(|e| panic!("{profile}: {e}"));
            check_sums(&p);
            assert!(p.nova.unwrap().instance_ram_mib >= 2048, "{profile}: {:?}", p.nova);
            assert!(p.nova.unwrap().instance_vcpus >= 2, "{profile}: {:?}", p.nova);
            // SCS-2V-4-20s, the smallest scs-0103 flavor with a root disk,
            // fits: Nova reports the instances volume's ext4 size (~2% less
            // than the volume) in whole GiB as one instance's maximum disk.
            assert!((p.storage.volumes.unwrap().nova_instances_gib as f64 * 0.98).floor() >= 20.0, "{profile}: {:?}", p.storage);
        }
    }

    #[test]
    fn target_disk_is_the_root_disk_else_the_largest_fixed_one() {
        let mut disks = vec![disk("sda", 500 * GIB, false), disk("sdb", 2000 * GIB, false), disk("sdc", 4000 * GIB, false)];
        disks[2].removable = true;
        assert_eq!(target_disk(&disks).map(|d| d.name.as_str()), Some("sdb"));
        disks[0].holds_root = true;
        assert_eq!(target_disk(&disks).map(|d| d.name.as_str()), Some("sda"));
        let p = plan(&hw(70_000_000, 16, true, disks), Profile::Box, IMAGE).unwrap();
        assert_eq!(p.storage.unused_disks, vec!["sdb".to_owned()], "removable sdc is not offered");
    }

    #[test]
    fn profile_names_parse_and_print() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!("huge".parse::<Profile>().unwrap_err(), "unknown profile `huge`; expected tiny, eval, box or edge");
    }

}
