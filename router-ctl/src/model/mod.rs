//! Domain model: Neutron resources as the API and the store see them, and the desired kernel
//! state (`spec`) that the realiser converges to.

pub mod spec;
