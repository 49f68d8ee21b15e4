//! oslo.messaging's `transport_url` (`rabbit://user:pass@host:port[,user:pass@host:port]/vhost`)
//! → the AMQP URIs lapin connects to, one per broker, tried in turn. The password never
//! appears in a message: `masked` replaces it.

use anyhow::{Result, bail};

/// One broker of the URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// What lapin connects to (`amqp://…`, heartbeat set).
    pub uri: String,
    /// The broker as logs show it, password masked.
    pub masked: String,
}

/// The brokers of a transport URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints(pub Vec<Endpoint>);

/// AMQP heartbeat (seconds) asked of the broker: a dead broker or network is noticed within
/// about twice this, and the agent reconnects.
const HEARTBEAT: u32 = 15;

impl Endpoints {
    /// Parses a transport URL; errors name `[neutron] transport_url` and never show the
    /// password.
    pub fn parse(url: &str) -> Result<Self> {
        let key = "[neutron] transport_url";
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("{key} is not a URL (expected rabbit://user:pass@host:port/vhost)");
        };
        if !matches!(scheme, "rabbit" | "amqp") {
            bail!("{key}: scheme {scheme:?} is not served (rabbit:// or amqp://)");
        }
        let (hosts, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p),
            None => (rest, ""),
        };
        // Query options (oslo's ssl=, heartbeat…) are not carried over.
        let vhost = path.split('?').next().unwrap_or_default();
        // oslo.messaging's empty virtual host is RabbitMQ's default one, "/".
        let vhost = if vhost.is_empty() { "%2f" } else { vhost };
        let mut out = Vec::new();
        for h in hosts.split(',') {
            let (auth, hostport) = match h.rsplit_once('@') {
                Some((a, hp)) => (Some(a), hp),
                None => (None, h),
            };
            if hostport.is_empty() {
                bail!("{key}: a broker without a host in {:?}", mask(url));
            }
            let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
                hostport.to_string()
            } else {
                format!("{hostport}:5672")
            };
            let auth_at = auth.map(|a| format!("{a}@")).unwrap_or_default();
            out.push(Endpoint {
                uri: format!("amqp://{auth_at}{hostport}/{vhost}?heartbeat={HEARTBEAT}"),
                masked: format!("{scheme}://{}{hostport}/{path}", masked_auth(auth)),
            });
        }
        Ok(Self(out))
    }
}

fn masked_auth(auth: Option<&str>) -> String {
    match auth {
        None => String::new(),
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{user}:***@"),
            None => format!("{a}@"),
        },
    }
}

/// `url` with every password replaced by `***` (for messages about a URL that did not parse).
pub fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| match h.rsplit_once('@') {
            Some((a, hp)) => format!("{}{hp}", masked_auth(Some(a))),
            None => h.to_string(),
        })
        .collect();
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{}{slash}{path}", hosts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_vhost_is_rabbits_slash_and_passwords_are_masked() {
        let e = Endpoints::parse("rabbit://guest:s3cret@127.0.0.1:5672/").unwrap();
        assert_eq!(
            e.0,
            vec![Endpoint {
                uri: "amqp://guest:s3cret@127.0.0.1:5672/%2f?heartbeat=15".into(),
                masked: "rabbit://guest:***@127.0.0.1:5672/".into(),
            }]
        );
    }

    #[test]
    fn several_brokers_a_vhost_and_a_default_port() {
        let e = Endpoints::parse("rabbit://a:pa@h1:5673,b:pb@h2/openstack").unwrap();
        assert_eq!(e.0.len(), 2);
        assert_eq!(e.0[0].uri, "amqp://a:pa@h1:5673/openstack?heartbeat=15");
        assert_eq!(e.0[1].uri, "amqp://b:pb@h2:5672/openstack?heartbeat=15");
        assert!(
            e.0.iter()
                .all(|x| !x.masked.contains("pa@") && !x.masked.contains("pb@"))
        );
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for bad in [
            "http://u:topsecret@h/",
            "u:topsecret@h",
            "rabbit://u:topsecret@/",
        ] {
            let e = format!("{:#}", Endpoints::parse(bad).unwrap_err());
            assert!(e.contains("transport_url"), "{e}");
            assert!(!e.contains("topsecret"), "{e}");
        }
        assert_eq!(
            mask("rabbit://u:p@h:1,v:q@g:2/x"),
            "rabbit://u:***@h:1,v:***@g:2/x"
        );
    }
}
