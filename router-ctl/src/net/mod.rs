//! Kernel networking through rtnetlink: namespaces, links, addresses, routes, sysctls and
//! gratuitous ARP, router advertisements. Plain building blocks with no policy; `realise` decides what to build.
//!
//! Every netlink operation runs on a thread in the target namespace, through a socket opened
//! there (setns is per thread, and a socket keeps the namespace it was created in), driven by
//! a current-thread tokio runtime of that thread: a namespace worker (`worker`) that entered
//! it, or, for the caller's own namespace, the caller itself (`worker::inline`).

pub mod arp;
pub mod closer;
pub mod link;
pub mod linkwatch;
pub mod mounts;
pub mod neigh;
pub mod ns;
pub mod owned;
pub mod ra;
pub mod rtnl;
pub mod sysctl;
pub mod worker;

pub use link::{LinkKind, LinkState};
pub use ns::{NetnsHandle, in_netns, with_netlink};
