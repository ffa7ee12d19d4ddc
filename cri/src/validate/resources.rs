//! Linux resources of a container (CreateContainer, UpdateContainerResources) and of a
//! pod (its resources and overhead). 0 and "" mean "not specified" throughout; what a
//! kernel or runc refuses, or would read as something else, is refused here.

use k8s_cri::v1::{LinuxContainerResources, UpdateContainerResourcesRequest};

use super::{invalid, no_control, shown};
use crate::error::CriResult;

/// The CFS period the kernel takes: 1 ms to 1 s (kubelet's cpuCFSQuotaPeriod range).
const CPU_PERIOD_US: std::ops::RangeInclusive<i64> = 1_000..=1_000_000;
/// The smallest CFS quota the kernel takes (1 ms).
const MIN_CPU_QUOTA_US: i64 = 1_000;
/// cgroup v1 cpu.shares range; kubelet sends 2 for no request and at most 262144
/// (runc maps it onto cgroup v2's cpu.weight 1..10000, and underflows below 2).
const CPU_SHARES: std::ops::RangeInclusive<i64> = 2..=262_144;
/// The kernel's oom_score_adj range.
const OOM_SCORE_ADJ: std::ops::RangeInclusive<i64> = -1000..=1000;

pub fn update_container_resources(req: &UpdateContainerResourcesRequest) -> CriResult<()> {
    super::no_control("container_id", &req.container_id)?;
    match &req.linux {
        Some(r) => linux("linux", r),
        None => Err(invalid(
            "linux",
            "UpdateContainerResources needs linux resources",
        )),
    }
}

pub(crate) fn linux(field: &str, r: &LinuxContainerResources) -> CriResult<()> {
    let f = |name: &str| format!("{field}.{name}");
    if r.cpu_period != 0 && !CPU_PERIOD_US.contains(&r.cpu_period) {
        return Err(invalid(
            f("cpu_period"),
            format!(
                "{} µs is outside {}..={} (0 leaves it unset)",
                r.cpu_period,
                CPU_PERIOD_US.start(),
                CPU_PERIOD_US.end()
            ),
        ));
    }
    // -1 is "no limit", as in the OCI spec and cgroup v1's cfs_quota_us.
    if !(r.cpu_quota == 0 || r.cpu_quota == -1 || r.cpu_quota >= MIN_CPU_QUOTA_US) {
        return Err(invalid(
            f("cpu_quota"),
            format!(
                "{} µs: a quota is at least {MIN_CPU_QUOTA_US} µs, or -1 for no limit \
                 (0 leaves it unset)",
                r.cpu_quota
            ),
        ));
    }
    if r.cpu_shares != 0 && !CPU_SHARES.contains(&r.cpu_shares) {
        return Err(invalid(
            f("cpu_shares"),
            format!(
                "{} is outside {}..={} (0 leaves it unset)",
                r.cpu_shares,
                CPU_SHARES.start(),
                CPU_SHARES.end()
            ),
        ));
    }
    if r.memory_limit_in_bytes < 0 {
        return Err(invalid(
            f("memory_limit_in_bytes"),
            format!(
                "{} is negative (0 leaves it unset)",
                r.memory_limit_in_bytes
            ),
        ));
    }
    // Swap is memory+swap, as runc reads it: -1 is unlimited, else at least the memory
    // limit, which it needs.
    let swap = r.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(invalid(
            f("memory_swap_limit_in_bytes"),
            format!("{swap} is negative (-1 is unlimited, 0 leaves it unset)"),
        ));
    }
    if swap > 0 && r.memory_limit_in_bytes == 0 {
        return Err(invalid(
            f("memory_swap_limit_in_bytes"),
            "is set without memory_limit_in_bytes, which it includes",
        ));
    }
    if swap > 0 && swap < r.memory_limit_in_bytes {
        return Err(invalid(
            f("memory_swap_limit_in_bytes"),
            format!(
                "{swap} is less than memory_limit_in_bytes {}: it counts memory and swap",
                r.memory_limit_in_bytes
            ),
        ));
    }
    if !OOM_SCORE_ADJ.contains(&r.oom_score_adj) {
        return Err(invalid(
            f("oom_score_adj"),
            format!("{} is outside -1000..=1000", r.oom_score_adj),
        ));
    }
    cpuset(&f("cpuset_cpus"), &r.cpuset_cpus)?;
    cpuset(&f("cpuset_mems"), &r.cpuset_mems)?;
    let mut sizes = Vec::new();
    for h in &r.hugepage_limits {
        let field = f("hugepage_limits");
        if !is_page_size(&h.page_size) {
            return Err(invalid(
                field,
                format!(
                    "page size {} is not <power of two><KB|MB|GB> (2MB, 1GB)",
                    shown(&h.page_size)
                ),
            ));
        }
        if i64::try_from(h.limit).is_err() {
            return Err(invalid(
                field,
                format!("limit {} for {} is too large", h.limit, h.page_size),
            ));
        }
        if sizes.contains(&&h.page_size) {
            return Err(invalid(field, format!("{} is given twice", h.page_size)));
        }
        sizes.push(&h.page_size);
    }
    for (k, v) in &r.unified {
        let field = f("unified");
        no_control(&field, k)?;
        no_control(format!("{field}[{}]", shown(k)), v)?;
        // runc writes each key as a file of the container's cgroup.
        if k.is_empty() || k.contains('/') || k.starts_with('.') {
            return Err(invalid(
                field,
                format!("key {} is not a cgroup file name", shown(k)),
            ));
        }
    }
    Ok(())
}

/// The kernel's cpu list syntax: `0-3,8,10-11` (no blanks, ranges not reversed).
fn cpuset(field: &str, s: &str) -> CriResult<()> {
    if s.is_empty() {
        return Ok(());
    }
    let number = |n: &str| {
        (!n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse::<u32>().ok())
            .flatten()
    };
    let ok = s.split(',').all(|part| match part.split_once('-') {
        Some((a, b)) => matches!((number(a), number(b)), (Some(a), Some(b)) if a <= b),
        None => number(part).is_some(),
    });
    if !ok {
        return Err(invalid(
            field,
            format!("{} is not a list like 0-3,8", shown(s)),
        ));
    }
    Ok(())
}

/// `<size><unit>B` with a power-of-two size and K, M or G (as runc's hugetlb files).
fn is_page_size(s: &str) -> bool {
    let Some(n) = s
        .strip_suffix("KB")
        .or_else(|| s.strip_suffix("MB"))
        .or_else(|| s.strip_suffix("GB"))
    else {
        return false;
    };
    n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u64>().is_ok_and(u64::is_power_of_two)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::HugepageLimit;

    /// What kubelet sends for a pod with requests and limits.
    fn kubelet() -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: 999,
            hugepage_limits: vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0,
                },
            ],
            unified: [("memory.oom.group".to_string(), "1".to_string())].into(),
            memory_swap_limit_in_bytes: 128 << 20,
            ..Default::default()
        }
    }

    fn with(f: impl FnOnce(&mut LinuxContainerResources)) -> CriResult<()> {
        let mut r = kubelet();
        f(&mut r);
        linux("linux.resources", &r)
    }

    #[test]
    fn what_kubelet_sends_passes() {
        assert!(with(|_| {}).is_ok());
        assert!(linux("r", &LinuxContainerResources::default()).is_ok());
        // BestEffort: the minimum shares, no limits; a guaranteed pod's cpuset.
        assert!(
            with(|r| {
                r.cpu_shares = 2;
                r.cpu_quota = 0;
                r.memory_limit_in_bytes = 0;
                r.memory_swap_limit_in_bytes = 0;
                r.oom_score_adj = -997;
                r.cpuset_cpus = "0-3,8".into();
                r.cpuset_mems = "0".into();
            })
            .is_ok()
        );
        assert!(with(|r| r.cpu_quota = -1).is_ok());
        assert!(with(|r| r.memory_swap_limit_in_bytes = -1).is_ok());
    }

    #[test]
    fn negative_or_absurd_values_are_refused() {
        type Case = (&'static str, fn(&mut LinuxContainerResources));
        let cases: [Case; 16] = [
            ("memory_limit_in_bytes", |r| r.memory_limit_in_bytes = -1),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_swap_limit_in_bytes = -2
            }),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_swap_limit_in_bytes = 1 << 20
            }),
            ("memory_swap_limit_in_bytes", |r| {
                r.memory_limit_in_bytes = 0
            }),
            ("cpu_shares", |r| r.cpu_shares = -2),
            ("cpu_shares", |r| r.cpu_shares = 1),
            ("cpu_shares", |r| r.cpu_shares = 262_145),
            ("cpu_quota", |r| r.cpu_quota = -5),
            ("cpu_quota", |r| r.cpu_quota = 999),
            ("cpu_period", |r| r.cpu_period = -1),
            ("cpu_period", |r| r.cpu_period = 2_000_000),
            ("oom_score_adj", |r| r.oom_score_adj = 1001),
            ("cpuset_cpus", |r| r.cpuset_cpus = "3-1".into()),
            ("cpuset_mems", |r| r.cpuset_mems = "0, 1".into()),
            ("hugepage_limits", |r| {
                r.hugepage_limits[0].page_size = "3MB".into()
            }),
            ("unified", |r| {
                r.unified.insert("../../cgroup.procs".into(), "1".into());
            }),
        ];
        for (field, f) in cases {
            match with(f) {
                Err(crate::error::CriError::InvalidArgument(m)) => {
                    assert!(m.starts_with(&format!("linux.resources.{field}:")), "{m}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(with(|r| r.hugepage_limits[1].limit = u64::MAX).is_err());
        assert!(with(|r| r.hugepage_limits[1].page_size = "2MB".into()).is_err());
        assert!(with(|r| r.oom_score_adj = -1001).is_err());
        assert!(with(|r| r.cpuset_cpus = "0-".into()).is_err());
        assert!(with(|r| r.cpuset_cpus = "a".into()).is_err());
    }

    #[test]
    fn update_needs_linux_resources() {
        let mut req = UpdateContainerResourcesRequest {
            container_id: "c".into(),
            ..Default::default()
        };
        assert!(update_container_resources(&req).is_err());
        req.linux = Some(kubelet());
        assert!(update_container_resources(&req).is_ok());
        req.linux.as_mut().unwrap().memory_limit_in_bytes = -1;
        assert!(update_container_resources(&req).is_err());
    }
}
