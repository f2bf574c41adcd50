//! What the machine has, read at run time (never assumed): its memory.

/// Total memory in bytes (`MemTotal` of `/proc/meminfo`); `None` where that cannot be read.
pub fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
