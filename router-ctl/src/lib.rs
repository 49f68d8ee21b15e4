//! router-ctl: a Neutron-style virtual router gateway whose NAT runs in eBPF.
//!
//! All logic lives in this library; the daemon (`daemon`) and the CLI (`cli`) are thin shells
//! over it. Layers: `api` (HTTP) → `store` (SQLite, desired state) → `realise` (kernel) →
//! `net` (rtnetlink) and `datapath` (eBPF maps and links).

pub mod agent;
pub mod api;
pub mod background;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod fd_table;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod metadata;
pub mod metrics;
pub mod model;
pub mod net;
pub mod realise;
pub mod store;
