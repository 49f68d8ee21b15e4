//! Starts a neutron stack and keeps it until stdin closes (or Enter): for poking at it by hand
//! with `nsenter --net=/run/netns/<netns>` and the venv's `openstack` CLI. Prints its
//! coordinates (the `ROUTER_NEUTRON_STACK` value) first.

fn main() -> anyhow::Result<()> {
    let stack = tests::neutron::Stack::start()?;
    println!("{}", stack.coordinates());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(stack);
    Ok(())
}
