//! The bad-input matrix: every endpoint against malformed, mistyped, out-of-range, oversized,
//! mislabelled and unauthenticated requests. Each must be the documented 4xx problem with its
//! code — never a 5xx.

mod common;

use coffer_testkit::Backend;
use common::{ADMIN, App, Resp, spawn, uuid};
use serde_json::{Value, json};

coffer_testkit::on_each_backend! {
    #![tokio::test(flavor = "multi_thread", worker_threads = 2)]
    every_write_refuses_bad_bodies,
    endpoint_specific_ranges_and_rules,
    reads_refuse_bad_paths_queries_and_tokens,
    unknown_routes_and_methods_are_problems,
}

/// A POST endpoint, a valid body for it, and which of its fields are required.
struct Write {
    path: String,
    valid: Value,
    required: &'static [&'static str],
    /// Where the amount sits in the body, for endpoints that carry one.
    amount: Option<&'static str>,
    /// The scope a caller needs: a read key (and for admin routes a write key) gets 403.
    admin: bool,
}

async fn writes(app: &App) -> Vec<Write> {
    let (a, b) = app.two_accounts("USD").await;
    let transfer = json!({"debit_account_id": a, "credit_account_id": b, "amount": 5, "ledger": "USD"});
    let pending = uuid();
    vec![
        Write {
            path: "/v1/ledgers".into(),
            valid: json!({"code": "EUR", "scale": 2}),
            required: &["code", "scale"],
            amount: None,
            admin: true,
        },
        Write {
            path: "/v1/accounts".into(),
            valid: json!({"ledger": "USD", "code": 7, "external_ref": "x"}),
            required: &["ledger"],
            amount: None,
            admin: false,
        },
        Write {
            path: "/v1/transfers".into(),
            valid: transfer.clone(),
            required: &["debit_account_id", "credit_account_id", "amount", "ledger"],
            amount: Some("amount"),
            admin: false,
        },
        Write {
            path: format!("/v1/transfers/{pending}/post"),
            valid: json!({"amount": 1}),
            required: &[],
            amount: Some("amount"),
            admin: false,
        },
        Write {
            path: format!("/v1/transfers/{pending}/void"),
            valid: json!({"id": uuid()}),
            required: &[],
            amount: None,
            admin: false,
        },
        Write {
            path: "/v1/transfers/batch".into(),
            valid: json!({"transfers": [transfer]}),
            required: &["transfers"],
            amount: Some("transfers[0].amount"),
            admin: false,
        },
        Write {
            path: "/v1/keys".into(),
            valid: json!({"scopes": ["read"]}),
            required: &["scopes"],
            amount: None,
            admin: true,
        },
    ]
}

async fn raw(app: &App, path: &str, body: &[u8]) -> Resp {
    app.send("POST", path, Some(ADMIN), Some(body.to_vec()), &[]).await
}

/// A 400 whose errors name `field` (or an element or member of it).
fn assert_invalid(r: &Resp, field: &str, case: &str) {
    assert_eq!(r.status, 400, "{case}: {}", r.text);
    r.assert_problem(400, "invalid_request");
    let named =
        r.body["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).any(|f| {
            f == field || f.starts_with(&format!("{field}[")) || f.starts_with(&format!("{field}."))
        });
    assert!(named, "{case}: expected an error on {field}, got {}", r.text);
}

/// Sets `path` (`a.b` or `transfers[0].amount`) in `body`.
fn set(body: &mut Value, path: &str, value: Value) {
    let mut at = body;
    for part in path.split('.') {
        at = match part.split_once('[') {
            Some((name, index)) => &mut at[name][index.trim_end_matches(']').parse::<usize>().unwrap()],
            None => &mut at[part],
        };
    }
    *at = value;
}

async fn every_write_refuses_bad_bodies(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (_, read_token) = app.key(&["read"], None).await;
    let (_, write_token) = app.key(&["write"], None).await;
    for w in writes(&app).await {
        let path = w.path.as_str();
        let valid = w.valid.to_string();

        for (case, body) in [
            ("malformed", br#"{"code": "USD","#.to_vec()),
            ("not json", b"hello".to_vec()),
            ("array", b"[]".to_vec()),
            ("string", br#""x""#.to_vec()),
            ("null", b"null".to_vec()),
            ("empty", Vec::new()),
            ("whitespace", b"  \n".to_vec()),
            ("trailing garbage", format!("{valid} x").into_bytes()),
            ("two objects", format!("{valid}{valid}").into_bytes()),
            ("invalid utf-8", b"{\"a\xff\": 1}".to_vec()),
            ("deep nesting", format!("{}{}", "{\"metadata\":".repeat(200), "}".repeat(200)).into_bytes()),
        ] {
            let r = raw(&app, path, &body).await;
            // The actions whose body is optional read `null` as no options, as the document says.
            let optional =
                ["/post", "/void", "/rotate", "/rotate-secret"].iter().any(|end| path.ends_with(end));
            if case == "null" && optional {
                assert_ne!(r.status, 400, "{path} {case}: {}", r.text);
                continue;
            }
            assert_eq!(r.status, 400, "{path} {case}: {}", r.text);
            r.assert_problem(400, "invalid_request");
        }

        if let Some((name, value)) = w.valid.as_object().unwrap().iter().next() {
            let duplicated = format!("{{\"{name}\":{value},{}", &valid[1..]);
            assert_invalid(&raw(&app, path, duplicated.as_bytes()).await, name, &duplicated);
        }

        let mut unknown = w.valid.clone();
        unknown["bogus"] = json!(1);
        assert_invalid(&app.post(path, unknown).await, "bogus", path);

        for field in w.required {
            let mut missing = w.valid.clone();
            missing.as_object_mut().unwrap().remove(*field);
            assert_invalid(&app.post(path, missing).await, field, path);
        }

        for (field, _) in w.valid.as_object().unwrap() {
            for wrong in [json!({"x": 1}), json!([1]), json!(true)] {
                let mut body = w.valid.clone();
                body[field] = wrong;
                assert_invalid(&app.post(path, body).await, field, path);
            }
        }

        if let Some(amount) = w.amount {
            for bad in [
                json!(1.5),
                json!(1.0),
                json!("100"),
                json!(0),
                json!(-1),
                json!(9223372036854775808u64),
                json!(1e3),
            ] {
                let mut body = w.valid.clone();
                set(&mut body, amount, bad.clone());
                assert_invalid(&app.post(path, body).await, amount, &format!("{path} amount {bad}"));
            }
            let mut body = w.valid.clone();
            set(&mut body, amount, json!(18446744073709551616.0));
            assert_invalid(&app.post(path, body).await, amount, path);
        }

        // Ten MiB, declared or streamed without a length.
        for chunked in [false, true] {
            let head = big_post(&app, path, 10 * 1024 * 1024, chunked).await;
            assert!(head.starts_with("HTTP/1.1 413 "), "{path} chunked: {chunked}: {head}");
            assert!(head.contains("content-type: application/problem+json"), "{head}");
        }

        for (case, content_type) in [
            ("text", Some("text/plain")),
            ("form", Some("application/x-www-form-urlencoded")),
            ("none", None),
        ] {
            let mut req = app.client.post(app.url(path)).bearer_auth(ADMIN).body(valid.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 415, "{path} content type {case}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        }

        let body = Some(valid.clone().into_bytes());
        let r = app.send("POST", path, None, body.clone(), &[]).await;
        r.assert_problem(401, "unauthorized");
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
        app.send("POST", path, Some("wrong-token"), body.clone(), &[])
            .await
            .assert_problem(401, "unauthorized");
        app.send("POST", path, None, body.clone(), &[("authorization", "Basic YWRtaW46YWRtaW4=")])
            .await
            .assert_problem(401, "unauthorized");
        app.send("POST", path, Some(&read_token), body.clone(), &[]).await.assert_problem(403, "forbidden");
        if w.admin {
            app.send("POST", path, Some(&write_token), body.clone(), &[])
                .await
                .assert_problem(403, "forbidden");
        }
        let bad_key = [("idempotency-key", "")];
        app.send("POST", path, Some(ADMIN), body.clone(), &bad_key)
            .await
            .assert_problem(400, "invalid_request");
    }
}

/// POSTs `total` bytes of whitespace (answering the response head), with a Content-Length or chunked, over a raw connection,
/// reading the answer while still sending: the server answers (and closes) before the end, so an
/// ordinary client may see a broken pipe instead of the answer.
async fn big_post(app: &App, path: &str, total: usize, chunked: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let framing =
        if chunked { "transfer-encoding: chunked".to_owned() } else { format!("content-length: {total}") };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN}\r\n\
         content-type: application/json\r\n{framing}\r\n\r\n"
    );
    let piece = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let mut ok = write.write_all(head.as_bytes()).await.is_ok();
    while ok && sent < total {
        ok = if chunked {
            write.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.is_ok()
                && write.write_all(&piece).await.is_ok()
                && write.write_all(b"\r\n").await.is_ok()
        } else {
            write.write_all(&piece).await.is_ok()
        };
        sent += piece.len();
    }
    if ok && chunked {
        let _ = write.write_all(b"0\r\n\r\n").await;
    }
    reader.await.unwrap()
}

async fn endpoint_specific_ranges_and_rules(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (a, b) = app.two_accounts("USD").await;
    let transfer = json!({"debit_account_id": a, "credit_account_id": b, "amount": 5, "ledger": "USD"});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/ledgers", json!({"code": "usd", "scale": 2}), "code"),
        ("/v1/ledgers", json!({"code": "ABCDEFGHIJKLMNOPQ", "scale": 2}), "code"),
        ("/v1/ledgers", json!({"code": "", "scale": 2}), "code"),
        ("/v1/ledgers", json!({"code": "EUR", "scale": 19}), "scale"),
        ("/v1/ledgers", json!({"code": "EUR", "scale": -1}), "scale"),
        ("/v1/ledgers", json!({"code": "EUR", "scale": 2.0}), "scale"),
        ("/v1/accounts", json!({"ledger": "USD", "code": 65536}), "code"),
        ("/v1/accounts", json!({"ledger": "USD", "code": -1}), "code"),
        ("/v1/accounts", json!({"ledger": "USD", "id": "not-a-uuid"}), "id"),
        ("/v1/accounts", json!({"ledger": "USD", "external_ref": "x".repeat(129)}), "external_ref"),
        ("/v1/accounts", json!({"ledger": "USD", "external_ref": ""}), "external_ref"),
        ("/v1/accounts", json!({"ledger": "USD", "metadata": [1]}), "metadata"),
        ("/v1/accounts", json!({"ledger": "USD", "metadata": {"x": "y".repeat(5000)}}), "metadata"),
        ("/v1/accounts", json!({"ledger": "USD", "flags": {"overdraft": true}}), "flags.overdraft"),
        (
            "/v1/accounts",
            json!({"ledger": "USD", "flags": {"debits_must_not_exceed_credits": 1}}),
            "flags.debits_must_not_exceed_credits",
        ),
        ("/v1/keys", json!({"scopes": ["superuser"]}), "scopes[0]"),
        ("/v1/keys", json!({"scopes": []}), "scopes"),
        ("/v1/keys", json!({"scopes": ["read"], "rate_limit_per_second": 0}), "rate_limit_per_second"),
        ("/v1/keys", json!({"scopes": ["read"], "name": ""}), "name"),
        ("/v1/transfers/batch", json!({"transfers": []}), "transfers"),
        ("/v1/transfers/batch", json!({"transfers": [transfer], "atomic": "yes"}), "atomic"),
        (
            "/v1/transfers/batch",
            json!({"transfers": [{"post_pending_id": uuid(), "ledger": "USD"}]}),
            "transfers[0].ledger",
        ),
        (
            "/v1/transfers/batch",
            json!({"transfers": [{"void_pending_id": uuid(), "amount": 1}]}),
            "transfers[0].amount",
        ),
        (
            "/v1/transfers/batch",
            json!({"transfers": [{"post_pending_id": uuid(), "void_pending_id": uuid()}]}),
            "transfers[0].void_pending_id",
        ),
        (
            "/v1/transfers/batch",
            json!({"transfers": [transfer, {"amount": 1}]}),
            "transfers[1].debit_account_id",
        ),
        (
            "/v1/transfers/batch",
            json!({"transfers": [{"debit_account_id": a, "credit_account_id": b, "amount": 1, "ledger": "USD", "timeout_seconds": 5}]}),
            "transfers[0].timeout_seconds",
        ),
    ];
    for (path, body, field) in cases {
        assert_invalid(&app.post(path, body.clone()).await, field, &format!("{path} {body}"));
    }

    let with = |key: &str, value: Value| {
        let mut t = transfer.clone();
        t[key] = value;
        t
    };
    let mut zero_timeout = with("timeout_seconds", json!(0));
    zero_timeout["pending"] = json!(true);
    for (body, field) in [
        (with("timeout_seconds", json!(5)), "timeout_seconds"),
        (zero_timeout, "timeout_seconds"),
        (with("pending", json!("true")), "pending"),
        (with("debit_account_id", json!("123")), "debit_account_id"),
        (with("ledger", json!("usd")), "ledger"),
        (with("code", json!(70000)), "code"),
    ] {
        assert_invalid(&app.post("/v1/transfers", body.clone()).await, field, &body.to_string());
    }

    let items: Vec<Value> = (0..8190).map(|_| transfer.clone()).collect();
    assert_invalid(
        &app.post("/v1/transfers/batch", json!({"transfers": items})).await,
        "transfers",
        "8190 items",
    );

    // Business rules are 422s, not 400s; an id taken with other fields is a 409.
    let r = app.post("/v1/transfers", with("credit_account_id", json!(a))).await;
    r.assert_problem(422, "accounts_must_be_different");
    app.post("/v1/transfers", with("debit_account_id", json!(uuid())))
        .await
        .assert_problem(422, "account_not_found");
    app.ledger("EUR").await;
    app.post("/v1/transfers", with("ledger", json!("EUR"))).await.assert_problem(422, "ledger_mismatch");
    app.post("/v1/accounts", json!({"ledger": "GBP"})).await.assert_problem(422, "ledger_not_found");
    let id = uuid();
    assert_eq!(app.post("/v1/transfers", with("id", json!(id))).await.status, 201);
    let mut different = with("id", json!(id));
    different["amount"] = json!(6);
    app.post("/v1/transfers", different).await.assert_problem(409, "exists_with_different_fields");
    app.post("/v1/ledgers", json!({"code": "EUR", "scale": 3}))
        .await
        .assert_problem(409, "exists_with_different_fields");
    // The credit account already holds 5: the largest amount would push it past 2^63-1.
    app.post("/v1/transfers", with("amount", json!(9223372036854775807u64)))
        .await
        .assert_problem(422, "overflow");
}

async fn reads_refuse_bad_paths_queries_and_tokens(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    let (_, read_token) = app.key(&["read"], None).await;
    let id = uuid();
    let reads = [
        "/v1/ledgers".to_owned(),
        "/v1/ledgers/USD".to_owned(),
        "/v1/accounts".to_owned(),
        format!("/v1/accounts/{id}"),
        format!("/v1/accounts/{id}/transfers"),
        "/v1/transfers".to_owned(),
        format!("/v1/transfers/{id}"),
        "/v1/keys".to_owned(),
    ];
    for path in &reads {
        let r = app.send("GET", path, None, None, &[]).await;
        r.assert_problem(401, "unauthorized");
        app.get_as("nope", path).await.assert_problem(401, "unauthorized");
        app.send("GET", path, None, None, &[("authorization", "Bearer")])
            .await
            .assert_problem(401, "unauthorized");
    }
    app.get_as(&read_token, "/v1/keys").await.assert_problem(403, "forbidden");
    app.send("DELETE", &format!("/v1/keys/{id}"), Some(&read_token), None, &[])
        .await
        .assert_problem(403, "forbidden");
    app.send("DELETE", &format!("/v1/keys/{id}"), None, None, &[]).await.assert_problem(401, "unauthorized");
    app.send("DELETE", &format!("/v1/keys/{id}"), Some(ADMIN), None, &[])
        .await
        .assert_problem(404, "not_found");

    for (path, field) in [
        ("/v1/accounts/not-a-uuid", "id"),
        ("/v1/accounts/123/transfers", "id"),
        ("/v1/transfers/xyz", "id"),
        ("/v1/transfers/xyz/post", "id"),
        ("/v1/transfers/xyz/void", "id"),
        ("/v1/keys/xyz", "id"),
        ("/v1/ledgers/usd", "code"),
        ("/v1/ledgers/%FF", "code"),
        // Spellings the UUID parser knows but the document does not: one resource, one URL.
        ("/v1/accounts/0196a0000000700080000000000000a1", "id"),
        ("/v1/accounts/%7B0196a000-0000-7000-8000-0000000000a1%7D", "id"),
        ("/v1/transfers/urn:uuid:0196a000-0000-7000-8000-0000000000a1", "id"),
    ] {
        let method = match path {
            p if p.ends_with("/post") || p.ends_with("/void") => "POST",
            p if p.starts_with("/v1/keys/") => "DELETE",
            _ => "GET",
        };
        let r = app.send(method, path, Some(ADMIN), Some(b"{}".to_vec()), &[]).await;
        assert_invalid(&r, field, path);
    }

    for list in ["/v1/ledgers", "/v1/accounts", "/v1/transfers", &format!("/v1/accounts/{id}/transfers")] {
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=abc", "limit"),
            ("limit=1.5", "limit"),
            ("limit=-1", "limit"),
            ("limit=", "limit"),
            ("cursor=zzz", "cursor"),
            ("cursor=c-1", "cursor"),
            ("bogus=1", "query"),
        ] {
            let r = app.get(&format!("{list}?{query}")).await;
            assert_eq!(r.status, 400, "{list}?{query}: {}", r.text);
            r.assert_problem(400, "invalid_request");
            let _ = field;
        }
    }
    for (query, field) in [("ledger=usd", "ledger"), ("external_ref=", "external_ref")] {
        assert_invalid(&app.get(&format!("/v1/accounts?{query}")).await, field, query);
    }
    for (query, field) in [("account_id=nope", "account_id"), ("ledger=x-y", "ledger")] {
        assert_invalid(&app.get(&format!("/v1/transfers?{query}")).await, field, query);
    }
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let Some(app) = spawn(backend).await else { return };
    app.get("/v1/nothing").await.assert_problem(404, "not_found");
    app.send("GET", "/", None, None, &[]).await.assert_problem(404, "not_found");
    let r = app.send("PUT", "/v1/transfers", Some(ADMIN), None, &[]).await;
    r.assert_problem(405, "method_not_allowed");
    assert!(r.header("allow").is_some_and(|a| a.contains("POST")), "{:?}", r.headers);
    app.send("DELETE", "/v1/ledgers", Some(ADMIN), None, &[]).await.assert_problem(405, "method_not_allowed");
    app.send("POST", "/healthz", None, None, &[]).await.assert_problem(405, "method_not_allowed");
    app.send("GET", "/v1/transfers/batch", Some(ADMIN), None, &[])
        .await
        .assert_problem(405, "method_not_allowed");
}
