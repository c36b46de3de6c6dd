//! Unit tests of the configuration: defaults, checks naming their field, masking, parsing.

use super::*;

#[test]
fn defaults_are_valid_single_node() {
    let c = Config::default();
    c.validate().expect("defaults validate");
    assert!(c.is_bootstrapper());
    assert_eq!(c.nats.url, vec!["nats://127.0.0.1:4222".to_string()]);
}

#[test]
fn validate_names_the_field() {
    let mut c = Config::default();
    c.raft.election_timeout_min_ms = 100;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("raft.election_timeout_min_ms"), "{err}");
}

#[test]
fn max_timeout_covers_the_default_and_admin_pool_is_positive() {
    let mut c = Config::default();
    assert_eq!(c.limits.max_timeout_ms, 60_000);
    assert_eq!(c.limits.max_admin_in_flight, 64);
    c.limits.max_timeout_ms = c.limits.default_timeout_ms;
    c.validate().expect("max equal to the default");
    c.limits.max_timeout_ms = c.limits.default_timeout_ms - 1;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("limits.max_timeout_ms"), "{err}");
    c.limits.max_timeout_ms = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("limits.max_timeout_ms"), "{err}");
    let mut c = Config::default();
    c.limits.max_admin_in_flight = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("limits.max_admin_in_flight"), "{err}");
}

#[test]
fn storage_quota_is_off_or_fits_one_largest_value() {
    let mut c = Config::default();
    assert_eq!(c.storage.max_bytes, 8 << 30);
    c.storage.max_bytes = 0;
    c.validate().expect("0 means no quota");
    c.storage.max_bytes = c.limits.max_value_bytes as u64;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("storage.max_bytes"), "{err}");
    c.storage.max_bytes = c.limits.max_value_bytes as u64 + 1024 + 8;
    c.validate().expect("one largest value fits");
}

#[test]
fn telemetry_and_metrics_settings_are_checked() {
    let check = |f: &dyn Fn(&mut Config)| {
        let mut c = Config::default();
        f(&mut c);
        c.validate().err().map(|e| e.to_string())
    };
    assert_eq!(
        check(&|c| c.telemetry.api_events = "sampled:0.1".into()),
        None
    );
    assert_eq!(check(&|c| c.telemetry.apply_events = "off".into()), None);
    assert_eq!(
        check(&|c| c.metrics.listen = Some("127.0.0.1:9464".into())),
        None
    );
    assert_eq!(check(&|c| c.metrics.listen = Some("[::1]:0".into())), None);
    for (f, name) in [
        (
            &(|c: &mut Config| c.telemetry.api_events = "sampled:2".into()) as &dyn Fn(&mut Config),
            "telemetry.api_events",
        ),
        (
            &|c: &mut Config| c.telemetry.apply_events = "most".into(),
            "telemetry.apply_events",
        ),
        (
            &|c: &mut Config| c.telemetry.status_interval_ms = 99,
            "telemetry.status_interval_ms",
        ),
        (
            &|c: &mut Config| c.metrics.listen = Some("localhost".into()),
            "metrics.listen",
        ),
        (
            &|c: &mut Config| c.metrics.listen = Some("1.2.3.4:99999".into()),
            "metrics.listen",
        ),
    ] {
        let err = check(f).expect("refused");
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn redacted_masks_secrets_and_url_credentials() {
    let mut c = Config::default();
    c.nats.url = vec![
        "nats://alice:url-pass@n1:4222".into(),
        "tls://url-token@n2:4222/x@y".into(),
        "n3:4222".into(),
    ];
    c.nats.password = Some("the-password".into());
    c.nats.nkey_seed = Some("SUSEED".into());
    let text = c.redacted();
    for secret in ["url-pass", "url-token", "alice", "the-password", "SUSEED"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("nats://***@n1:4222"), "{text}");
    assert!(text.contains("tls://***@n2:4222/x@y"), "{text}");
    assert!(text.contains("\"n3:4222\""), "{text}");
}

#[test]
fn members_parse_from_csv_or_list() {
    let j: ClusterConfig =
        serde_json::from_str(r#"{"name":"a","initial_members":"1, 2,3"}"#).unwrap();
    assert_eq!(j.initial_members, vec![1, 2, 3]);
    let j: ClusterConfig = serde_json::from_str(r#"{"name":"a","initial_members":[4,5]}"#).unwrap();
    assert_eq!(j.initial_members, vec![4, 5]);
    assert!(serde_json::from_str::<ClusterConfig>(r#"{"initial_members":"1,x"}"#).is_err());
}
