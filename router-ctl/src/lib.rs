//! router-ctl: a Neutron-style virtual router gateway whose NAT runs in eBPF.
//!
//! The daemon and the CLI are thin shells over these modules.

pub mod datapath;
