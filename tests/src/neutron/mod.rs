//! A real OpenStack control plane for the agent-mode tests and `cargo xtask demo --neutron`:
//! neutron-server 29 from PyPI (pinned requirements, a venv under the target dir), MariaDB and
//! RabbitMQ from Debian packages, all in a namespace of their own on its loopback ([`Stack`]);
//! a relay that lets an agent in a host namespace reach RabbitMQ on 127.0.0.1 of its own
//! namespace ([`relay`]); the L2-agent reports the harness sends on a test node's behalf
//! ([`report`]); the networks the tests and the demo create through the CLI ([`networks`]).

pub mod cloud;
mod mariadb;
pub mod networks;
pub mod node;
pub mod proc;
mod rabbitmq;
pub mod relay;
pub mod report;
mod server;
mod stack;
pub mod traffic;
pub mod venv;

pub use cloud::{Cloud, id_of};
pub use server::{AGENT_DOWN_TIME, API_PORT};
pub use stack::{STACK_ENV, Stack};
