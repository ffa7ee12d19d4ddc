//! The files a pod's containers see as /etc/hostname, /etc/hosts and /etc/resolv.conf.

use super::spec::DnsConfig;

/// resolv.conf for a pod: the DnsConfig when it says anything, else the host's file unchanged.
pub fn render_resolv_conf(dns: Option<&DnsConfig>, host_resolv_conf: &str) -> String {
    let Some(dns) =
        dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()))
    else {
        return host_resolv_conf.to_string();
    };
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// /etc/hosts for a pod with its own network: localhost entries plus the pod's own IPs.
pub fn render_hosts(hostname: &str, ips: &[String]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "1.1.1.1".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            render_resolv_conf(Some(&dns), "nameserver 9.9.9.9\n"),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:5\n"
        );
    }

    #[test]
    fn resolv_conf_falls_back_to_host() {
        let host = "# host\nnameserver 192.168.1.1\n";
        assert_eq!(render_resolv_conf(None, host), host);
        assert_eq!(render_resolv_conf(Some(&DnsConfig::default()), host), host);
    }

    #[test]
    fn hosts_has_localhost_and_pod_ip() {
        let h = render_hosts("web-0", &["10.88.0.7".into()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.7\tweb-0\n"));
    }
}
