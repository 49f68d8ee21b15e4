//! [`Cloud`]: a test's view of a [`Stack`] through the stock `openstack` CLI, remembering what
//! it created so that drop deletes it (floating IPs, router interfaces and gateways, routers,
//! ports, subnets, networks, agents of the test's hosts), in reverse order, even after a
//! failure. With one stack shared by the whole run, each test leaves it as it found it.

use std::cell::RefCell;

use serde_json::Value;

use super::Stack;

/// What to undo, most recent last.
enum Undo {
    Delete(String, String),
    RouterSubnet(String, String),
    RouterGateway(String),
    AgentsOf(String),
}

pub struct Cloud<'a> {
    pub stack: &'a Stack,
    undo: RefCell<Vec<Undo>>,
}

/// The `id` of a CLI answer.
#[track_caller]
pub fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

impl<'a> Cloud<'a> {
    pub fn new(stack: &'a Stack) -> Self {
        Self {
            stack,
            undo: RefCell::new(Vec::new()),
        }
    }

    /// `openstack ARGS` (panics with the CLI's output on failure).
    #[track_caller]
    pub fn os(&self, args: &[&str]) -> Value {
        self.stack.os_ok(args)
    }

    /// `openstack ARGS -f json`.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> Value {
        self.os(&[args, &["-f", "json"]].concat())
    }

    /// `openstack KIND create ARGS -f json`, deleted on drop (`KIND` may be two words, e.g.
    /// "floating ip").
    #[track_caller]
    pub fn create(&self, kind: &str, args: &[impl AsRef<str>]) -> Value {
        let mut full: Vec<&str> = kind.split(' ').collect();
        full.push("create");
        full.extend(args.iter().map(AsRef::as_ref));
        let v = self.json(&full);
        self.undo
            .borrow_mut()
            .push(Undo::Delete(kind.to_string(), id_of(&v)));
        v
    }

    /// `openstack router add subnet`, removed on drop.
    #[track_caller]
    pub fn add_router_subnet(&self, router: &str, subnet: &str) {
        self.os(&["router", "add", "subnet", router, subnet]);
        self.undo
            .borrow_mut()
            .push(Undo::RouterSubnet(router.into(), subnet.into()));
    }

    /// `openstack router set --external-gateway NET`, unset on drop.
    #[track_caller]
    pub fn set_gateway(&self, router: &str, net: &str) -> Value {
        self.os(&["router", "set", "--external-gateway", net, router]);
        self.undo
            .borrow_mut()
            .push(Undo::RouterGateway(router.into()));
        self.json(&["router", "show", router])
    }

    /// Deletes the agents neutron knows on `host` when the cloud drops (they would otherwise
    /// linger as dead agents in a shared stack).
    pub fn forget_agents_on_drop(&self, host: &str) {
        self.undo.borrow_mut().push(Undo::AgentsOf(host.into()));
    }

    /// Marks `kind id` as already deleted by the test itself.
    pub fn deleted(&self, id: &str) {
        self.undo
            .borrow_mut()
            .retain(|u| !matches!(u, Undo::Delete(_, i) if i == id));
    }

    /// The agents neutron lists for `host`.
    pub fn agents_on(&self, host: &str) -> Vec<Value> {
        self.json(&["network", "agent", "list", "--host", host])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The hosts of the L3 agents neutron has scheduled `router` to.
    pub fn router_hosts(&self, router: &str) -> Vec<String> {
        let v = self.json(&["network", "agent", "list", "--router", router]);
        let mut hosts: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["Host"].as_str().map(str::to_string))
            .collect();
        hosts.sort();
        hosts
    }
}

impl Drop for Cloud<'_> {
    fn drop(&mut self) {
        let undo = std::mem::take(&mut *self.undo.borrow_mut());
        for u in undo.into_iter().rev() {
            let args: Vec<String> = match &u {
                Undo::Delete(kind, id) => {
                    let mut a: Vec<String> = kind.split(' ').map(str::to_string).collect();
                    a.push("delete".into());
                    a.push(id.clone());
                    a
                }
                Undo::RouterSubnet(r, s) => ["router", "remove", "subnet", r, s]
                    .map(str::to_string)
                    .to_vec(),
                Undo::RouterGateway(r) => ["router", "unset", "--external-gateway", r]
                    .map(str::to_string)
                    .to_vec(),
                Undo::AgentsOf(host) => {
                    let agents = self
                        .stack
                        .os(&["network", "agent", "list", "--host", host, "-f", "json"])
                        .ok()
                        .and_then(|v| v.as_array().cloned())
                        .unwrap_or_default();
                    for a in agents {
                        if let Some(id) = a["ID"].as_str() {
                            let _ = self.stack.os(&["network", "agent", "delete", id]);
                        }
                    }
                    continue;
                }
            };
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = self.stack.os(&refs) {
                // Already gone (the test deleted it) is fine; anything else is worth a line.
                let msg = format!("{e:#}");
                if !msg.contains("No ")
                    && !msg.contains("not found")
                    && !msg.contains("Could not find")
                {
                    eprintln!("cleanup: {msg}");
                }
            }
        }
    }
}
