//! `router-ctl`: the daemon and its CLI client in one binary.
fn main() -> anyhow::Result<()> {
    let obj = router_ctl::datapath::object()?;
    println!("embedded object: {} bytes", obj.len());
    Ok(())
}
