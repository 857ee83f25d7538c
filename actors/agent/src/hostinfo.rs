//! Facts about the host for `Hello` (names, addresses, hardware), read with
//! `sysinfo`.

use std::net::IpAddr;

use herd_codec::proto::Hello;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Networks, RefreshKind, System};

/// Fills the host fields of `hello` (hostname, addresses, os, platform,
/// kernel, arch, cpu, memory, boot time).
pub(crate) fn fill_hello(hello: &mut Hello) {
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    hello.hostname = System::host_name().unwrap_or_default();
    hello.os = std::env::consts::OS.to_owned();
    hello.platform = System::distribution_id();
    hello.platform_version = System::os_version().unwrap_or_default();
    hello.kernel_version = System::kernel_version().unwrap_or_default();
    hello.arch = System::cpu_arch();
    hello.cpu_model = system
        .cpus()
        .first()
        .map(|cpu| cpu.brand().trim().to_owned())
        .unwrap_or_default();
    hello.cpu_cores = u32::try_from(system.cpus().len()).unwrap_or(u32::MAX);
    hello.memory_bytes = system.total_memory();
    hello.boot_time = System::boot_time();
    for network in Networks::new_with_refreshed_list().values() {
        for ip in network.ip_networks() {
            let text = ip.addr.to_string();
            match (ip.addr, classify(ip.addr)) {
                (_, Scope::Loopback) => {}
                (IpAddr::V4(_), Scope::Intranet) => hello.intranet_ipv4.push(text),
                (IpAddr::V4(_), Scope::Extranet) => hello.extranet_ipv4.push(text),
                (IpAddr::V6(_), Scope::Intranet) => hello.intranet_ipv6.push(text),
                (IpAddr::V6(_), Scope::Extranet) => hello.extranet_ipv6.push(text),
            }
        }
    }
    for list in [
        &mut hello.intranet_ipv4,
        &mut hello.intranet_ipv6,
        &mut hello.extranet_ipv4,
        &mut hello.extranet_ipv6,
    ] {
        list.sort();
        list.dedup();
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Scope {
    Loopback,
    Intranet,
    Extranet,
}

/// Private, shared (CGNAT), link-local and unique-local addresses are
/// intranet; loopback is left out; everything else is extranet.
fn classify(addr: IpAddr) -> Scope {
    match addr {
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => Scope::Loopback,
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared = a == 100 && (64..128).contains(&b);
            if v4.is_private() || v4.is_link_local() || shared {
                Scope::Intranet
            } else {
                Scope::Extranet
            }
        }
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => Scope::Loopback,
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            if unique_local || link_local {
                Scope::Intranet
            } else {
                Scope::Extranet
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let scope = |s: &str| classify(s.parse().unwrap());
        assert_eq!(scope("127.0.0.1"), Scope::Loopback);
        assert_eq!(scope("10.1.2.3"), Scope::Intranet);
        assert_eq!(scope("172.20.0.1"), Scope::Intranet);
        assert_eq!(scope("100.100.0.1"), Scope::Intranet);
        assert_eq!(scope("8.8.8.8"), Scope::Extranet);
        assert_eq!(scope("::1"), Scope::Loopback);
        assert_eq!(scope("fe80::1"), Scope::Intranet);
        assert_eq!(scope("fd00::1"), Scope::Intranet);
        assert_eq!(scope("2001:db8::1"), Scope::Extranet);
    }

    #[test]
    fn hello_gets_host_facts() {
        let mut hello = Hello::default();
        fill_hello(&mut hello);
        assert_eq!(hello.os, std::env::consts::OS);
        assert!(hello.cpu_cores > 0);
        assert!(hello.memory_bytes > 0);
        assert!(hello.boot_time > 0);
        assert!(!hello.arch.is_empty());
    }
}
