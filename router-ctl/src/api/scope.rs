//! Neutron's per-project scoping of stored resources, one shape for all of them: a resource
//! another project may not see is answered 404 (its existence stays hidden), and one it may see
//! but not change is answered 403 with the policy rule.

use rusqlite::Connection;

use super::{Ctx, resources::Kind};
use crate::{
    model::{Fault, FloatingIp, Network, Port, Router, Subnet},
    store,
};

/// A stored resource that belongs to a project.
pub(super) trait Scoped: Sized {
    /// Reads it from the store (`None` when absent).
    fn fetch(c: &Connection, id: &str) -> Result<Option<Self>, Fault>;
    /// The 404 Neutron answers when it is absent or hidden.
    fn not_found(id: &str) -> Fault;
    /// The project that owns it.
    fn project_id(&self) -> &str;
    /// Whether every project may see it (shared or external networks and their subnets).
    fn public(&self, _c: &Connection) -> Result<bool, Fault> {
        Ok(false)
    }
    /// Whether the caller may see it.
    fn seen_by(&self, c: &Connection, ctx: &Ctx) -> Result<bool, Fault> {
        Ok(ctx.owns(self.project_id()) || self.public(c)?)
    }
}

/// The resource if the caller may see it, else its NotFound.
pub(super) fn visible<T: Scoped>(c: &Connection, ctx: &Ctx, id: &str) -> Result<T, Fault> {
    match T::fetch(c, id)? {
        Some(x) if x.seen_by(c, ctx)? => Ok(x),
        _ => Err(T::not_found(id)),
    }
}

/// The resources among `items` the caller may see, in their order.
pub(super) fn seen<T: Scoped>(c: &Connection, ctx: &Ctx, items: Vec<T>) -> Result<Vec<T>, Fault> {
    let mut out = Vec::with_capacity(items.len());
    for x in items {
        if x.seen_by(c, ctx)? {
            out.push(x);
        }
    }
    Ok(out)
}

/// The resource if the caller may change it by `action`: 404 when invisible, 403 when only
/// visible.
pub(super) fn owned<T: Scoped>(
    c: &Connection,
    ctx: &Ctx,
    id: &str,
    action: &str,
) -> Result<T, Fault> {
    let x = visible::<T>(c, ctx, id)?;
    if ctx.owns(x.project_id()) {
        Ok(x)
    } else {
        Err(Fault::policy(action))
    }
}

/// `impl Scoped` for a resource: its type, 404, and (optionally) whether every project sees
/// it.
macro_rules! scoped {
    ($ty:ty, $not_found:expr $(, $public:expr)?) => {
        impl Scoped for $ty {
            fn fetch(c: &Connection, id: &str) -> Result<Option<Self>, Fault> {
                store::get(c, id)
            }
            fn not_found(id: &str) -> Fault {
                ($not_found)(id)
            }
            fn project_id(&self) -> &str {
                &self.project_id
            }
            $(fn public(&self, c: &Connection) -> Result<bool, Fault> {
                ($public)(self, c)
            })?
        }
    };
}

scoped!(
    Network,
    |id| Fault::not_found("network", id),
    |n: &Network, _| Ok(n.external || n.shared)
);
scoped!(
    Subnet,
    |id| Fault::not_found("subnet", id),
    |s: &Subnet, c| Ok(
        store::get::<Network>(c, &s.network_id)?.is_some_and(|n| n.external || n.shared)
    )
);
scoped!(Port, |id| Fault::not_found("port", id));
scoped!(Router, |id| Fault::not_found("router", id));
scoped!(FloatingIp, |id| { Kind::FloatingIp.not_found(None, id) });
