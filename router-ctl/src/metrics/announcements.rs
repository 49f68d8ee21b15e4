//! The gratuitous ARPs the realiser sent for its own addresses, read from the announcer's
//! counts at each scrape: how many went to everyone (flooded by the bridge) and how many only
//! to the ports that can use them (`realise::audience`).

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use super::PREFIX;
use crate::net::arp::Sent;

/// Reads the announcer's counts when the registry is encoded.
#[derive(Debug)]
pub(super) struct AnnouncementCollector {
    sent: Arc<Sent>,
}

impl AnnouncementCollector {
    pub(super) fn new(sent: Arc<Sent>) -> Self {
        Self { sent }
    }
}

impl Collector for AnnouncementCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (flooded, to_ports) = self.sent.get();
        let name = format!("{PREFIX}_gratuitous_arp_frames");
        let mut m = encoder.encode_descriptor(
            &name,
            "Gratuitous ARP frames sent for the routers' own addresses, by audience: everyone \
             (once on the bridge, which floods it to every port) or ports (only on the bridge's \
             ports that are not gateway taps of routers that never asked for the address).",
            None,
            MetricType::Counter,
        )?;
        for (audience, n) in [("everyone", flooded), ("ports", to_ports)] {
            ConstCounter::new(n).encode(m.encode_family(&[("audience", audience)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn both_audiences_are_series_with_the_announcers_counts() {
        let sent = Arc::new(Sent::default());
        let mut m = Metrics::new();
        m.collect_announcements(sent.clone());
        let text = m.encode();
        for audience in ["everyone", "ports"] {
            let line =
                format!("router_ctl_gratuitous_arp_frames_total{{audience=\"{audience}\"}} 0");
            assert!(text.contains(&line), "{line} not in:\n{text}");
        }
        // Read at each scrape: counts sent after the registration show.
        sent.flooded.fetch_add(2, Ordering::Relaxed);
        sent.to_ports.fetch_add(5, Ordering::Relaxed);
        let text = m.encode();
        assert!(
            text.contains("# TYPE router_ctl_gratuitous_arp_frames_total counter"),
            "{text}"
        );
        assert!(
            text.contains("router_ctl_gratuitous_arp_frames_total{audience=\"everyone\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("router_ctl_gratuitous_arp_frames_total{audience=\"ports\"} 5"),
            "{text}"
        );
    }
}
