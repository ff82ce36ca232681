//! The agent's cgroup v2 numbers as containerd's `io.containerd.cgroups.v2.Metrics`, the only
//! shapes (with v1) that CRI and `ctr task metrics` accept.

use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use husk_protocol::agent::api::StatsResponse;

/// "No limit" as the agent reports it; containerd's v2 metrics use 0 for a missing value and
/// the kernel's maximum for "max", so it passes through.
fn get(map: &std::collections::HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// Builds the Metrics message from the agent's answer.
pub fn to_metrics(s: &StatsResponse) -> Metrics {
    let mut pids = PidsStat::new();
    pids.current = s.pids_current;
    pids.limit = s.pids_max;

    let c = &s.cpu_stat;
    let mut cpu = CPUStat::new();
    cpu.usage_usec = get(c, "usage_usec");
    cpu.user_usec = get(c, "user_usec");
    cpu.system_usec = get(c, "system_usec");
    cpu.nr_periods = get(c, "nr_periods");
    cpu.nr_throttled = get(c, "nr_throttled");
    cpu.throttled_usec = get(c, "throttled_usec");

    let m = &s.memory_stat;
    let mut mem = MemoryStat::new();
    mem.anon = get(m, "anon");
    mem.file = get(m, "file");
    mem.kernel_stack = get(m, "kernel_stack");
    mem.slab = get(m, "slab");
    mem.sock = get(m, "sock");
    mem.shmem = get(m, "shmem");
    mem.file_mapped = get(m, "file_mapped");
    mem.file_dirty = get(m, "file_dirty");
    mem.file_writeback = get(m, "file_writeback");
    mem.anon_thp = get(m, "anon_thp");
    mem.inactive_anon = get(m, "inactive_anon");
    mem.active_anon = get(m, "active_anon");
    mem.inactive_file = get(m, "inactive_file");
    mem.active_file = get(m, "active_file");
    mem.unevictable = get(m, "unevictable");
    mem.slab_reclaimable = get(m, "slab_reclaimable");
    mem.slab_unreclaimable = get(m, "slab_unreclaimable");
    mem.pgfault = get(m, "pgfault");
    mem.pgmajfault = get(m, "pgmajfault");
    mem.workingset_refault = get(m, "workingset_refault");
    mem.workingset_activate = get(m, "workingset_activate");
    mem.workingset_nodereclaim = get(m, "workingset_nodereclaim");
    mem.pgrefill = get(m, "pgrefill");
    mem.pgscan = get(m, "pgscan");
    mem.pgsteal = get(m, "pgsteal");
    mem.pgactivate = get(m, "pgactivate");
    mem.pgdeactivate = get(m, "pgdeactivate");
    mem.pglazyfree = get(m, "pglazyfree");
    mem.pglazyfreed = get(m, "pglazyfreed");
    mem.thp_fault_alloc = get(m, "thp_fault_alloc");
    mem.thp_collapse_alloc = get(m, "thp_collapse_alloc");
    mem.usage = s.memory_current;
    mem.usage_limit = s.memory_max;
    mem.swap_usage = s.swap_current;
    mem.swap_limit = s.swap_max;

    let e = &s.memory_events;
    let mut events = MemoryEvents::new();
    events.low = get(e, "low");
    events.high = get(e, "high");
    events.max = get(e, "max");
    events.oom = get(e, "oom");
    events.oom_kill = get(e, "oom_kill");

    let mut io = IOStat::new();
    io.usage =
        s.io.iter()
            .map(|d| {
                let mut entry = IOEntry::new();
                entry.major = d.major;
                entry.minor = d.minor;
                entry.rbytes = d.rbytes;
                entry.wbytes = d.wbytes;
                entry.rios = d.rios;
                entry.wios = d.wios;
                entry
            })
            .collect();

    let mut metrics = Metrics::new();
    metrics.pids = MessageField::some(pids);
    metrics.cpu = MessageField::some(cpu);
    metrics.memory = MessageField::some(mem);
    metrics.memory_events = MessageField::some(events);
    metrics.io = MessageField::some(io);
    metrics
}

/// The Metrics message as the `Any` containerd expects (`io.containerd.cgroups.v2.Metrics`).
pub fn to_any(s: &StatsResponse) -> Any {
    let m = to_metrics(s);
    let mut any = Any::new();
    any.type_url = "io.containerd.cgroups.v2.Metrics".into();
    any.value = m.write_to_bytes().unwrap_or_default();
    any
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::MessageFull;
    use husk_protocol::agent::api::IoStat;

    use super::*;

    #[test]
    fn numbers_land_in_the_v2_fields() {
        let mut s = StatsResponse::new();
        s.cpu_stat.insert("usage_usec".into(), 1500);
        s.memory_stat.insert("anon".into(), 4096);
        s.memory_events.insert("oom_kill".into(), 1);
        s.memory_current = 8192;
        s.memory_max = u64::MAX;
        s.pids_current = 3;
        let mut d = IoStat::new();
        d.major = 254;
        d.rbytes = 10;
        s.io.push(d);
        let any = to_any(&s);
        assert_eq!(any.type_url, Metrics::descriptor().full_name());
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!(m.memory.anon, 4096);
        assert_eq!(m.memory.usage, 8192);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.io.usage[0].major, 254);
        assert_eq!(m.io.usage[0].rbytes, 10);
    }
}
