use super::*;

#[test]
fn names() {
    for ok in ["a", "web-1", "db.prod_2", "0", &"x".repeat(63)] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        ".a",
        "A",
        "a/b",
        "..",
        "a b",
        "é",
        &"x".repeat(64),
        "a\0",
    ] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn spec_rejects_unknown_fields_and_bad_values() {
    let e =
        serde_json::from_str::<VmSpec>(r#"{"name":"a","kernel":"/k","disk":"/x"}"#).unwrap_err();
    assert!(e.to_string().contains("disk"), "{e}");
    let s: VmSpec = serde_json::from_str(r#"{"name":"a","kernel":"/k"}"#).unwrap();
    assert_eq!(
        (s.cpus, s.memory, s.restart),
        (1, 512 << 20, RestartPolicy::Never)
    );
    assert!(s.validate().is_ok());
    let bad = |f: fn(&mut VmSpec)| {
        let mut t = s.clone();
        f(&mut t);
        t.validate().unwrap_err()
    };
    assert!(bad(|t| t.cpus = 0).contains("cpus"));
    assert!(bad(|t| t.memory = 4095).contains("memory"));
    assert!(bad(|t| t.memory = 1 << 41).contains("memory"));
    assert!(bad(|t| t.kernel = "rel/k".into()).contains("kernel"));
    assert!(bad(|t| t.name = "../x".into()).contains("name"));
    fn net(tap: &str, mac: Option<&str>) -> NetSpec {
        NetSpec {
            tap: tap.into(),
            mac: mac.map(Into::into),
        }
    }
    assert!(bad(|t| t.nets = vec![net("0123456789abcdef", None)]).contains("nets[0].tap"));
    assert!(bad(|t| t.nets = vec![net("a b", None)]).contains("nets[0].tap"));
    assert!(bad(|t| t.nets = vec![net("a", Some("01:00:00:00:00:01"))]).contains("multicast"));
    assert!(bad(|t| t.nets = vec![net("a", Some("zz"))]).contains("nets[0].mac"));
    assert!(bad(|t| t.nets = vec![net("a", None), net("a", None)]).contains("nets[1].tap"));
    assert!(bad(|t| {
        let m = Some("02:00:00:00:00:01");
        t.nets = vec![net("a", m), net("b", m)]
    })
    .contains("nets[1].mac"));
    let mut ok = s.clone();
    ok.nets = vec![net("tap0", None), net("tap1", Some("52:54:00:00:00:02"))];
    assert!(ok.validate().is_ok());
    let p: RestartPolicy = serde_json::from_str("\"on-failure\"").unwrap();
    assert_eq!(p, RestartPolicy::OnFailure);
}

#[test]
fn openapi_lists_every_route() {
    let doc = openapi();
    for r in ROUTES {
        assert!(
            doc["paths"][r.path][r.method].is_object(),
            "{} {}",
            r.method,
            r.path
        );
    }
    assert_eq!(doc["components"]["schemas"]["State"]["enum"][6], "crashed");
}

#[test]
fn states_round_trip() {
    for s in State::ALL {
        assert_eq!(State::parse(s.as_str()), Some(s));
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, format!("\"{}\"", s.as_str()));
    }
    assert_eq!(State::parse("zombie"), None);
}

#[test]
fn vsock_and_balloon_are_checked() {
    let s: VmSpec = serde_json::from_str(
        r#"{"name":"a","kernel":"/k","memory":67108864,"vsock":{"cid":3},
            "balloon":{"size":67108864,"free_page_reporting":true}}"#,
    )
    .unwrap();
    assert!(s.validate().is_ok());
    let b = s.balloon.clone().unwrap();
    assert_eq!(
        (b.size, b.deflate_on_oom, b.free_page_reporting),
        (64 << 20, false, true)
    );
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        let mut t = s.clone();
        t.vsock = Some(VsockSpec { cid });
        assert!(t.validate().unwrap_err().contains("vsock.cid"), "{cid}");
    }
    let mut t = s.clone();
    t.balloon.as_mut().unwrap().size = (64 << 20) + 4096;
    assert!(t.validate().unwrap_err().contains("balloon.size"));
    for bad in [
        r#"{"name":"a","kernel":"/k","vsock":{"cid":3,"socket":"/tmp/x"}}"#,
        r#"{"name":"a","kernel":"/k","vsock":{"cid":"3"}}"#,
        r#"{"name":"a","kernel":"/k","balloon":{"size":0,"stats":true}}"#,
        r#"{"name":"a","kernel":"/k","balloon":{}}"#,
    ] {
        assert!(serde_json::from_str::<VmSpec>(bad).is_err(), "{bad}");
    }
}
