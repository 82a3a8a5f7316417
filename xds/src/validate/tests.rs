//! Table tests of the checks.

use super::*;
use std::path::Path;

fn errors(yaml: &str) -> Vec<String> {
    let cfg: ProxyConfig = serde_yaml::from_str(yaml).unwrap();
    validate(&cfg).iter().map(|e| e.to_string()).collect()
}

#[test]
fn clean_config_passes() {
    let text = std::fs::read_to_string(Path::new("../examples/static/proxy.yaml")).unwrap();
    assert!(errors(&text).is_empty(), "{:?}", errors(&text));
}

#[test]
fn dangling_route_and_bad_values() {
    let e = errors(
        "listeners: {admin: 'nope'}\nservices:\n  - name: a\n    ports: [{port: 70000}]\n    addresses: [1.2.3]\n\
         virtualHosts:\n  - hosts: [x.local]\n    routes: [{route: {service: missing}}]\n",
    );
    let joined = e.join("\n");
    for want in [
        "listeners.admin: `nope` is not an IP:port address",
        "services[0].ports[0].port: 70000 is not a port number",
        "services[0].addresses[0]: `1.2.3` is not an IP address",
        "virtualHosts[0].routes[0].route.service: no service named or hosting `missing`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
}

#[test]
fn duplicate_service() {
    let e =
        errors("services:\n  - {name: a, ports: [{port: 1}]}\n  - {name: a, ports: [{port: 1}]}\n");
    assert_eq!(e, vec!["services[1].name: service `a` is defined twice"]);
}

#[test]
fn upstream_tls_settings() {
    let base = "services:\n  - name: a\n    ports: [{port: 443}]\n";
    let ok = errors(&format!("{base}    tls: {{sni: a.example, caCertificates: /ca.pem, clientCertificate: /c.pem, privateKey: /k.pem, subjectAltNames: [a.example, 10.0.0.1, 'spiffe://td/ns/x/sa/y']}}\n    portTls: [{{port: 443}}]\n"));
    assert!(ok.is_empty(), "{ok:?}");
    let e = errors(&format!("{base}    tls: {{sni: '*.x', clientCertificate: /c.pem, subjectAltNames: ['a b']}}\n    portTls: [{{port: 80}}]\n"));
    let joined = e.join("\n");
    for want in [
        "services[0].tls.sni: `*.x` is not a DNS name",
        "services[0].tls.privateKey: clientCertificate needs privateKey",
        "services[0].tls.subjectAltNames[0]: `a b` is not",
        "services[0].portTls[0].port: service `a` has no port 80",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
}

#[test]
fn endpoint_identity_must_be_spiffe() {
    let ok = errors("services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{address: 127.0.0.1, identity: 'spiffe://cluster.local/ns/a/sa/b'}]\n");
    assert!(ok.is_empty(), "{ok:?}");
    let e = errors("services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{address: 127.0.0.1, identity: 'spiffe://Bad/ns//x'}]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("services[0].endpoints[0].identity:"),
        "{e:?}"
    );
    let e = errors("services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{address: 127.0.0.1, sidecarAddress: '127.0.0.1:15006'}]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("needs `identity`"), "{e:?}");
}
