use super::*;
use crate::ads::pack;
use crate::{outbound_traffic_policy, OutboundTrafficPolicy, Settings};

const NODE: &str = "shop/cart";

/// Resources of every registered type, two of each list.
fn every_type() -> ProxyResources {
    let svc = |name: &str| Service {
        name: name.into(),
        hosts: vec![name.into()],
        ..Default::default()
    };
    let vh = |name: &str| VirtualHost {
        name: name.into(),
        hosts: vec![format!("{name}.shop")],
        ..Default::default()
    };
    let authz = |name: &str| AuthorizationPolicy {
        name: name.into(),
        ..Default::default()
    };
    let authn = |name: &str| RequestAuthentication {
        name: name.into(),
        ..Default::default()
    };
    ProxyResources {
        workload: Some(Workload {
            name: "cart".into(),
            namespace: "shop".into(),
            labels: [("app".to_string(), "cart".to_string())].into(),
            ..Default::default()
        }),
        services: Arc::new(vec![svc("payments"), svc("catalog")]),
        virtual_hosts: Arc::new(vec![vh("catalog"), vh("payments")]),
        mesh_settings: Some(MeshSettings {
            outbound_traffic_policy: Some(OutboundTrafficPolicy {
                mode: outbound_traffic_policy::Mode::RegistryOnly as i32,
            }),
            settings: Some(Settings {
                access_log: Some(false),
                ..Default::default()
            }),
        }),
        authorization_policies: vec![authz("shop/allow-frontend"), authz("shop/deny-all")],
        request_authentications: vec![authn("shop/jwt")],
    }
}

fn names(state: &State, type_url: &str) -> Vec<String> {
    state[type_url].keys().cloned().collect()
}

#[test]
fn type_urls_are_the_wire_ones_in_subscription_order() {
    assert_eq!(
        ProxyResources::TYPE_URLS,
        [
            "type.googleapis.com/halyard.config.v1.Workload",
            "type.googleapis.com/halyard.config.v1.Service",
            "type.googleapis.com/halyard.config.v1.VirtualHost",
            "type.googleapis.com/halyard.config.v1.MeshSettings",
            "type.googleapis.com/halyard.config.v1.AuthorizationPolicy",
            "type.googleapis.com/halyard.config.v1.RequestAuthentication",
        ]
    );
}

#[test]
fn every_type_round_trips_through_its_state() {
    let resources = every_type();
    let state = resources.to_state(NODE);
    let encoded: Vec<&str> = state.keys().map(String::as_str).collect();
    let mut listed = ProxyResources::TYPE_URLS.to_vec();
    listed.sort_unstable();
    assert_eq!(encoded, listed, "the type URL list is what is encoded");

    // type URL, the names its resources get (in name order).
    let cases: [(&str, &[&str]); 6] = [
        (WORKLOAD_TYPE, &[NODE]),
        (SERVICE_TYPE, &["catalog", "payments"]),
        (VIRTUAL_HOST_TYPE, &["catalog", "payments"]),
        (MESH_SETTINGS_TYPE, &["mesh"]),
        (
            AUTHORIZATION_POLICY_TYPE,
            &["shop/allow-frontend", "shop/deny-all"],
        ),
        (REQUEST_AUTHENTICATION_TYPE, &["shop/jwt"]),
    ];
    assert_eq!(cases.len(), ProxyResources::TYPE_URLS.len());
    for (type_url, want) in cases {
        assert_eq!(names(&state, type_url), want, "{type_url}");
        for r in state[type_url].values() {
            assert_eq!(r.body.type_url, type_url, "{}", r.name);
        }
    }
    // Versions are the content hashes of `Resource::from_message`, as before the registry.
    let w = resources.workload.as_ref().expect("workload");
    assert_eq!(state[WORKLOAD_TYPE][NODE], Resource::from_message(NODE, w));
    assert_eq!(
        state[SERVICE_TYPE]["catalog"],
        Resource::from_message("catalog", &resources.services[1])
    );

    let back = ProxyResources::from_state(&state, NODE).expect("decodes");
    // Lists come back in name order.
    let mut want = resources.clone();
    Arc::make_mut(&mut want.services).sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(back, want);
    assert_eq!(back.to_state(NODE), state);
}

#[test]
fn nothing_encodes_as_empty_sets_and_decodes_as_nothing() {
    let state = ProxyResources::default().to_state(NODE);
    assert_eq!(state.len(), ProxyResources::TYPE_URLS.len());
    assert!(state.values().all(|m| m.is_empty()));
    assert_eq!(
        ProxyResources::from_state(&state, NODE),
        Ok(ProxyResources::default())
    );
    assert_eq!(
        ProxyResources::from_state(&State::new(), NODE),
        Ok(ProxyResources::default())
    );
}

#[test]
fn another_nodes_workload_is_an_error() {
    let state = every_type().to_state("shop/other");
    let err = ProxyResources::from_state(&state, NODE).expect_err("not ours");
    assert_eq!(
        err,
        ResourcesError::OtherNode {
            kind: "workload".into(),
            name: "shop/other".into(),
            node_id: NODE.into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "workload resource `shop/other` is not this proxy's (node id `shop/cart`)"
    );
    // Beside its own, another node's workload is ignored.
    let mut state = every_type().to_state(NODE);
    let other = Resource::from_message("shop/other", &Workload::default());
    state
        .entry(WORKLOAD_TYPE.to_string())
        .or_default()
        .insert(other.name.clone(), other);
    let r = ProxyResources::from_state(&state, NODE).expect("decodes");
    assert_eq!(r.workload, every_type().workload);
}

#[test]
fn a_resource_that_does_not_decode_names_its_type_and_name() {
    let mut state = every_type().to_state(NODE);
    let bad = Resource::new("bad", "1", pack(&VirtualHost::default()));
    state
        .entry(SERVICE_TYPE.to_string())
        .or_default()
        .insert("bad".into(), bad);
    let err = ProxyResources::from_state(&state, NODE).expect_err("wrong body");
    assert_eq!(
        err.to_string(),
        "type.googleapis.com/halyard.config.v1.Service resource `bad`: expected a resource of \
         type type.googleapis.com/halyard.config.v1.Service, got \
         type.googleapis.com/halyard.config.v1.VirtualHost"
    );
    assert!(matches!(err, ResourcesError::Decode { ref name, .. } if name == "bad"));
}

#[test]
fn bare_sotw_resources_are_named_by_their_type() {
    let r = every_type();
    let w = r.workload.clone().unwrap_or_default();
    let m = r.mesh_settings.clone().unwrap_or_default();
    // type URL, a bare resource of it, the name it gets.
    let cases = [
        (WORKLOAD_TYPE, pack(&w), NODE),
        (SERVICE_TYPE, pack(&r.services[0]), "payments"),
        (VIRTUAL_HOST_TYPE, pack(&r.virtual_hosts[0]), "catalog"),
        (MESH_SETTINGS_TYPE, pack(&m), "mesh"),
        (
            AUTHORIZATION_POLICY_TYPE,
            pack(&r.authorization_policies[0]),
            "shop/allow-frontend",
        ),
        (
            REQUEST_AUTHENTICATION_TYPE,
            pack(&r.request_authentications[0]),
            "shop/jwt",
        ),
    ];
    assert_eq!(cases.len(), ProxyResources::TYPE_URLS.len());
    for (type_url, any, want) in cases {
        let got = Resource::from_sotw_any(type_url, NODE, any.clone()).expect(type_url);
        assert_eq!(got.name, want, "{type_url}");
        assert_eq!(got, Resource::from_any(want, any), "{type_url}");
    }
    // A workload or mesh settings body is not decoded to be named.
    let junk = Any {
        type_url: WORKLOAD_TYPE.into(),
        value: vec![0xff, 0xff].into(),
    };
    assert_eq!(
        Resource::from_sotw_any(WORKLOAD_TYPE, NODE, junk).map(|r| r.name),
        Ok(NODE.to_string())
    );
    let unnamed = Resource::from_sotw_any(
        AUTHORIZATION_POLICY_TYPE,
        NODE,
        pack(&AuthorizationPolicy::default()),
    );
    assert!(
        matches!(unnamed, Err(UnpackError::Unnamed(_))),
        "{unnamed:?}"
    );
    let unknown = Any {
        type_url: "type.googleapis.com/other.Thing".into(),
        value: Vec::new().into(),
    };
    let err = Resource::from_sotw_any("type.googleapis.com/other.Thing", NODE, unknown);
    assert!(matches!(err, Err(UnpackError::Unnamed(_))), "{err:?}");
}

#[test]
fn the_encoder_shares_sets_by_allocation_only() {
    let a = every_type();
    let mut b = every_type();
    b.workload = None;
    b.services = a.services.clone(); // the same set
    let mut c = every_type();
    c.services = Arc::new(vec![Service {
        name: "only".into(),
        ..Default::default()
    }]);
    let mut enc = Encoder::new();
    let sa = enc.encode("shop/a", &a);
    let sb = enc.encode("shop/b", &b);
    let sc = enc.encode("shop/c", &c);
    assert_eq!(sa[SERVICE_TYPE], sb[SERVICE_TYPE]);
    assert_eq!(names(&sc, SERVICE_TYPE), ["only"]);
    assert_eq!(names(&sa, WORKLOAD_TYPE), ["shop/a"]);
    assert!(sb[WORKLOAD_TYPE].is_empty());
    for (node, r, s) in [
        ("shop/a", &a, &sa),
        ("shop/b", &b, &sb),
        ("shop/c", &c, &sc),
    ] {
        assert_eq!(&r.to_state(node), s, "{node}");
    }
}

#[test]
fn version_names_every_type_in_registry_order() {
    assert_eq!(
        ProxyResources::version_of(&State::new()),
        "workload=,service=,virtualhost=,meshsettings=,authorizationpolicy=,\
         requestauthentication="
    );
    let state = every_type().to_state(NODE);
    let v = ProxyResources::version_of(&state);
    let parts: Vec<(&str, &str)> = v.split(',').filter_map(|p| p.split_once('=')).collect();
    assert_eq!(parts.len(), ProxyResources::TYPE_URLS.len());
    for ((short, version), t) in parts.into_iter().zip(ProxyResources::TYPE_URLS) {
        assert!(
            t.to_ascii_lowercase().ends_with(&format!(".{short}")),
            "{t}"
        );
        assert_eq!(version, set_version(state[*t].values()));
    }
}
