//! Property test: random bodies never cause a 500, and a rejected request changes nothing.

use super::*;
use crate::fuzz::{self, arb_json, body_for, targets};

#[test]
fn random_bodies_never_500_and_rejections_change_nothing() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = T::new();
    let (net, sub, router) = rt.block_on(async {
        let net = t.network("adm", json!({"router:external": true})).await;
        let s = t.subnet("adm", &net, "10.0.0.0/24").await;
        let r = t.create("adm", "routers", json!({"router": {}})).await;
        (net, id(&s, "subnet"), id(&r, "router"))
    });
    let mut targets = targets(&net, &sub, &router);
    targets.extend([
        (
            "PUT",
            format!("/v2.0/routers/{router}/add_extraroutes"),
            "router",
        ),
        (
            "PUT",
            format!("/v2.0/routers/{router}/remove_extraroutes"),
            "router",
        ),
        ("PUT", format!("/v2.0/networks/{net}/tags"), ""),
        ("POST", format!("/v2.0/routers/{router}/tags"), ""),
        ("PUT", format!("/v2.0/subnets/{sub}/tags/x"), ""),
        ("DELETE", format!("/v2.0/subnets/{sub}/tags/absent"), ""),
    ]);
    let if_match = [
        None,
        Some("revision_number=0"),
        Some("revision_number=99"),
        Some("revision_number=x"),
        Some("W/\"revision_number=1\""),
        Some("revision_number=1, revision_number=2"),
        Some("*"),
    ];
    fuzz::runner(256)
        .run(
            &(
                0..targets.len(),
                arb_json(),
                any::<bool>(),
                any::<bool>(),
                0..if_match.len(),
            ),
            |(i, body, wrap, admin, m)| {
                let (method, path, _) = &targets[i];
                let body = body_for(&targets[i], body, wrap);
                let token = if admin { "adm" } else { "ta" };
                rt.block_on(async {
                    let snapshot = || async {
                        let mut all = Vec::new();
                        for c in ["networks", "subnets", "ports", "routers"] {
                            all.push(
                                t.req("GET", &format!("/v2.0/{c}"), "adm", Value::Null)
                                    .await,
                            );
                        }
                        all
                    };
                    let before = snapshot().await;
                    let headers: Vec<(&str, &str)> =
                        if_match[m].map(|h| ("if-match", h)).into_iter().collect();
                    let (st, v) = t
                        .raw_with(method, path, Some(token), &body.to_string(), &headers)
                        .await;
                    prop_assert!(st < 500, "{method} {path} {body} → {st} {v}");
                    if st >= 400 {
                        prop_assert!(v["NeutronError"]["type"].is_string(), "{v}");
                        prop_assert!(
                            snapshot().await == before,
                            "rejected {method} {path} {body} changed state"
                        );
                    }
                    Ok(())
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}
