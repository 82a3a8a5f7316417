//! Table tests for what a route does besides choosing a destination: retries (Istio's
//! default, explicit, disabled) and injected faults (delays, HTTP and gRPC aborts).

use halyard_xds::{fault, RetryPolicy};

use super::super::traffic::{grpc_code, ISTIO_DEFAULT_RETRY_ON};
use super::routing::{reviews_vs, route, translated, vhost};
use fault::abort::Error::{GrpcStatus, HttpStatus};

#[test]
fn retries_default_explicit_and_disabled() {
    let t = translated(&reviews_vs(
        r#"    - name: default
      match: [{uri: {prefix: /a}}]
      route: [{destination: {host: reviews}}]
    - name: explicit
      match: [{uri: {prefix: /b}}]
      route: [{destination: {host: reviews}}]
      retries: {attempts: 3, perTryTimeout: 2s, retryOn: " 5xx, reset,503 ,retriable-4xx", backoff: 50ms}
    - name: istio-conditions
      match: [{uri: {prefix: /c}}]
      route: [{destination: {host: reviews}}]
      retries: {attempts: 4}
    - name: disabled
      match: [{uri: {prefix: /d}}]
      route: [{destination: {host: reviews}}]
      retries: {attempts: 0, retryOn: 5xx}
    - name: envoy-only
      route: [{destination: {host: reviews}}]
      retries: {attempts: 2, retryOn: "reset-before-request,connect-failure"}
"#,
    ));
    let vh = vhost(&t, "reviews");
    let ms = |n: i32| pbjson_types::Duration {
        seconds: 0,
        nanos: n * 1_000_000,
    };
    let strings = |s: &[&str]| s.iter().map(ToString::to_string).collect::<Vec<_>>();
    let cases = [
        // No `retries`: left to the proxy, which applies Istio's default.
        ("default", None),
        (
            "explicit",
            Some(RetryPolicy {
                attempts: 3,
                per_try_timeout: Some(pbjson_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                retry_on: strings(&["5xx", "reset", "503", "retriable-4xx"]),
                backoff: Some(ms(50)),
            }),
        ),
        // `retries` without `retryOn`: Istio's default conditions, spelled out.
        (
            "istio-conditions",
            Some(RetryPolicy {
                attempts: 4,
                retry_on: strings(&ISTIO_DEFAULT_RETRY_ON),
                ..Default::default()
            }),
        ),
        ("disabled", Some(RetryPolicy::default())),
        (
            "envoy-only",
            Some(RetryPolicy {
                attempts: 2,
                retry_on: strings(&["connect-failure"]),
                ..Default::default()
            }),
        ),
    ];
    for (name, want) in cases {
        assert_eq!(route(vh, name).retries, want, "{name}");
    }
    assert_eq!(
        t.notes,
        ["VirtualService shop/reviews: route `envoy-only`: retry condition `reset-before-request` is not applied yet"]
    );
}

#[test]
fn faults_delay_and_abort_with_http_and_grpc_statuses() {
    let t = translated(&reviews_vs(
        r#"    - name: delay
      match: [{uri: {prefix: /a}}]
      route: [{destination: {host: reviews}}]
      fault: {delay: {fixedDelay: 5s, percentage: {value: 10.5}}}
    - name: delay-percent
      match: [{uri: {prefix: /b}}]
      route: [{destination: {host: reviews}}]
      fault: {delay: {fixedDelay: 100ms, percent: 20}}
    - name: abort-http
      match: [{uri: {prefix: /c}}]
      route: [{destination: {host: reviews}}]
      fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    - name: abort-grpc
      match: [{uri: {prefix: /d}}]
      route: [{destination: {host: reviews}}]
      fault:
        abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
        delay: {fixedDelay: 1s}
    - name: abort-deadline
      route: [{destination: {host: reviews}}]
      fault: {abort: {grpcStatus: DEADLINE_EXCEEDED}}
"#,
    ));
    let vh = vhost(&t, "reviews");
    let d = |seconds: i64, nanos: i32| Some(pbjson_types::Duration { seconds, nanos });
    let delay = |fixed_delay, percent: f64| {
        Some(fault::Delay {
            fixed_delay,
            percent: Some(percent),
        })
    };
    let abort = |error, percent: f64| {
        Some(fault::Abort {
            error: Some(error),
            percent: Some(percent),
        })
    };
    let cases = [
        ("delay", delay(d(5, 0), 10.5), None),
        ("delay-percent", delay(d(0, 100_000_000), 20.0), None),
        ("abort-http", None, abort(HttpStatus(503), 50.0)),
        // Istio: a fault without a percentage applies to no request.
        (
            "abort-grpc",
            delay(d(1, 0), 0.0),
            abort(GrpcStatus(14), 100.0),
        ),
        ("abort-deadline", None, abort(GrpcStatus(4), 0.0)),
    ];
    for (name, delay, abort) in cases {
        assert_eq!(
            route(vh, name).fault,
            Some(halyard_xds::Fault { delay, abort }),
            "{name}"
        );
    }
    assert_eq!(route(vh, "abort-http").retries, None);
}

#[test]
fn grpc_status_names_map_to_codes() {
    let names = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    for (code, name) in (0u32..).zip(names) {
        assert_eq!(grpc_code(name), Some(code), "{name}");
    }
    assert_eq!(grpc_code("unavailable"), Some(14));
    assert_eq!(grpc_code("16"), Some(16));
    assert_eq!(grpc_code("17"), None);
    assert_eq!(grpc_code("TEAPOT"), None);
}
