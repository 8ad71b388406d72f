//! CPU and memory readings from `/proc` (Linux): a process's CPU time and resident set, and the
//! whole machine's busy time, so a run can say what the server cost and how busy the machine
//! was with everything else.
//!
//! `/proc` counts CPU in clock ticks of `USER_HZ`, which Linux fixes at 100 for user space
//! whatever the kernel's own tick rate, so readings have a 10 ms resolution.

use std::io;
use std::time::Duration;

/// Ticks per second in `/proc/*/stat` and `/proc/stat` (Linux's `USER_HZ`).
const USER_HZ: u64 = 100;

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / USER_HZ)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected {what} format"),
    )
}

/// User plus system CPU time of process `pid` (all its threads) so far.
///
/// # Errors
/// The process is gone or `/proc` is not Linux's.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| malformed("/proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based, proc(5)).
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| malformed("/proc/PID/stat"))
    };
    Ok(ticks(field(14)? + field(15)?))
}

/// Resident set size of process `pid`, in KiB (`VmRSS`).
///
/// # Errors
/// The process is gone or `/proc` is not Linux's.
pub fn process_rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| malformed("/proc/PID/status"))
}

/// The machine's CPU time spent busy (not idle or waiting for I/O) since boot, over all cores,
/// and the number of cores.
///
/// # Errors
/// `/proc/stat` is missing or not Linux's.
pub fn machine_busy() -> io::Result<(Duration, usize)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut lines = stat.lines();
    let total: Vec<u64> = lines
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| malformed("/proc/stat"))?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let (idle, iowait) = match total.as_slice() {
        [_, _, _, idle, iowait, ..] => (*idle, *iowait),
        _ => return Err(malformed("/proc/stat")),
    };
    let all: u64 = total.iter().take(8).sum();
    let cores = lines.filter(|l| l.starts_with("cpu")).count();
    Ok((ticks(all - idle - iowait), cores.max(1)))
}

/// The 1, 5 and 15 minute load averages as `/proc/loadavg` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let before = process_cpu(pid).expect("cpu");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(process_cpu(pid).expect("cpu") >= before);
        assert!(process_rss_kib(pid).expect("rss") > 0);
        let (busy, cores) = machine_busy().expect("machine");
        assert!(busy > Duration::ZERO && cores >= 1);
        assert_eq!(load_average().split(' ').count(), 3);
    }
}
