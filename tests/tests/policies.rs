//! The example policies through the real runtime, table-driven: realistic
//! requests and backends in, the decision asserted.

use switchyard::contract::{CircuitState, Request, Tag};
use switchyard::policy::{Decision, PolicyErrorKind, PolicyRuntime, RuntimeSettings};
use switchyard_tests::{artifacts, chat_request, read, Fleet};

/// What a case expects: targets in order and labels that must be present,
/// or a rejection status.
enum Expect {
    Route(&'static [&'static str], &'static [(&'static str, &'static str)]),
    Reject(u16),
}

struct Case {
    name: &'static str,
    request: Request,
    expect: Expect,
}

fn runtime() -> PolicyRuntime {
    PolicyRuntime::new(RuntimeSettings { cache_dir: None, call_deadline: std::time::Duration::from_millis(100), ..Default::default() })
        .unwrap()
}

fn run(policy: &str, wasm: &str, config: &str, fleet: &Fleet, cases: Vec<Case>) {
    let loaded = runtime().load(policy, &read(wasm), config, &fleet.backends).unwrap_or_else(|e| panic!("{policy}: {e}"));
    for case in cases {
        let decision = loaded.decide(&case.request, &fleet.stats).unwrap_or_else(|e| panic!("{policy} / {}: {e}", case.name));
        match (&case.expect, &decision) {
            (Expect::Route(targets, labels), Decision::Route(plan)) => {
                let got: Vec<&str> = plan.targets.iter().map(|t| t.backend.as_str()).collect();
                assert_eq!(&got, targets, "{policy} / {}", case.name);
                for (k, v) in labels.iter() {
                    assert!(
                        plan.labels.iter().any(|(lk, lv)| lk == k && lv == v),
                        "{policy} / {}: label {k}={v} missing in {:?}",
                        case.name,
                        plan.labels
                    );
                }
            }
            (Expect::Reject(status), Decision::Reject { status: got, message }) => {
                assert_eq!(got, status, "{policy} / {}: {message}", case.name);
                assert!(!message.is_empty());
            }
            (_, got) => panic!("{policy} / {}: unexpected {got:?}", case.name),
        }
    }
}

fn user(text: &str) -> Request {
    chat_request("auto", text)
}

fn with(mut r: Request, edit: impl FnOnce(&mut Request)) -> Request {
    edit(&mut r);
    r
}

fn tagged(text: &str, key: &str, value: &str) -> Request {
    with(user(text), |r| r.tags.push(Tag { key: key.into(), value: value.into() }))
}

fn refused(policy: &str, wasm: &str, config: &str, fleet: &Fleet, expected: &str) {
    let e = runtime().load(policy, &read(wasm), config, &fleet.backends).expect_err(config);
    assert_eq!(e.kind(), PolicyErrorKind::ConfigRefused, "{config}: {e}");
    assert!(e.message().contains(expected), "{config}: {e}");
}

fn priced() -> Fleet {
    Fleet::default()
        .with("premium", 10.0, |_, _| {})
        .with("standard", 3.0, |_, _| {})
        .with("budget", 0.5, |_, _| {})
        .with("bargain", 0.1, |b, _| b.capabilities.vision = false)
        .with("local", 0.0, |b, _| b.tags = vec!["private".into()])
}

#[test]
fn fallback_cheaper() {
    let fleet = priced();
    let cfg = r#"{"primary": "standard"}"#;
    run(
        "fallback-cheaper",
        artifacts::FALLBACK_CHEAPER,
        cfg,
        &fleet,
        vec![
            Case {
                name: "primary, then cheaper ones closest in price first",
                request: user("hi"),
                expect: Expect::Route(&["standard", "budget", "bargain", "local"], &[("reason", "primary")]),
            },
            Case {
                name: "images skip the blind fallback",
                request: with(user("look"), |r| r.messages[0].has_image = true),
                expect: Expect::Route(&["standard", "budget", "local"], &[]),
            },
        ],
    );
    let mut down = priced();
    down.stats[1].circuit = CircuitState::Open; // standard
    down.stats[2].circuit = CircuitState::Open; // budget
    run(
        "fallback-cheaper",
        artifacts::FALLBACK_CHEAPER,
        r#"{"primary": "standard", "max_fallbacks": 2}"#,
        &down,
        vec![Case {
            name: "open fallbacks go last; the primary stays first for the router to skip",
            request: user("hi"),
            expect: Expect::Route(&["standard", "bargain", "local"], &[]),
        }],
    );
    run(
        "fallback-cheaper",
        artifacts::FALLBACK_CHEAPER,
        r#"{"primary": "bargain"}"#,
        &fleet,
        vec![Case {
            name: "primary cannot read images: cheaper capable ones only",
            request: with(user("look"), |r| r.messages[0].has_image = true),
            expect: Expect::Route(&["local"], &[("reason", "primary-cannot-serve")]),
        }],
    );
    refused("fallback-cheaper", artifacts::FALLBACK_CHEAPER, r#"{"primary": "nope"}"#, &fleet, "not a configured backend");
    refused("fallback-cheaper", artifacts::FALLBACK_CHEAPER, "{}", &fleet, "missing field `primary`");
}

#[test]
fn private_data() {
    let fleet = priced();
    let sensitive = |text: &str, kind: &'static str| Case { name: kind, request: user(text), expect: Expect::Route(&["local"], &[]) };
    run(
        "private-data",
        artifacts::PRIVATE_DATA,
        r#"{"keywords": ["Project Nightingale"], "patterns": ["(?i)\\binternal only\\b"]}"#,
        &fleet,
        vec![
            Case {
                name: "plain prompt goes anywhere, cheapest first",
                request: user("What is the capital of France?"),
                expect: Expect::Route(&["local", "bargain", "budget"], &[("sensitive", "no")]),
            },
            sensitive("Write to jane.doe@example.com about the invoice", "email"),
            sensitive("Call me on +44 20 7946 0958 tomorrow", "phone"),
            sensitive("My card is 4111 1111 1111 1111, exp 12/29", "card"),
            sensitive("Wire it to DE89 3704 0044 0532 0130 00 please", "iban"),
            sensitive("Why does sk-proj-abcdefghijklmnopqrstuvwxyz123456 fail?", "secret"),
            sensitive("Summarise the Project Nightingale roadmap", "keyword"),
            sensitive("This memo is INTERNAL ONLY.", "pattern"),
            Case {
                name: "a number that fails Luhn is not a card",
                request: user("Order 4111 1111 1111 1112 shipped"),
                expect: Expect::Route(&["local", "bargain", "budget"], &[("sensitive", "no")]),
            },
            Case {
                name: "a bad IBAN checksum is not an IBAN",
                request: user("Code DE00 3704 0044 0532 0130 00"),
                expect: Expect::Route(&["local", "bargain", "budget"], &[("sensitive", "no")]),
            },
            Case {
                name: "text the router cut counts as sensitive",
                request: with(user("a harmless start"), |r| r.messages[0].text_bytes = 500_000),
                expect: Expect::Route(&["local"], &[("sensitive", "unscanned-text")]),
            },
        ],
    );
    let mut down = priced();
    down.stats[4].circuit = CircuitState::Open; // local
    run(
        "private-data",
        artifacts::PRIVATE_DATA,
        "{}",
        &down,
        vec![
            Case { name: "no healthy private backend: 403", request: user("card 4111-1111-1111-1111"), expect: Expect::Reject(403) },
            Case {
                name: "plain prompts still flow",
                request: user("hello"),
                expect: Expect::Route(&["bargain", "budget", "standard"], &[]),
            },
        ],
    );
    refused("private-data", artifacts::PRIVATE_DATA, r#"{"patterns": ["(unclosed"]}"#, &fleet, "pattern `(unclosed`");
    refused("private-data", artifacts::PRIVATE_DATA, r#"{"detect": ["dna"]}"#, &fleet, "unknown kind `dna`");
}

#[test]
fn ab_test() {
    let fleet = priced();
    let cfg =
        r#"{"arms": [{"name": "control", "backend": "standard", "weight": 50}, {"name": "candidate", "backend": "budget", "weight": 50}]}"#;
    let loaded = runtime().load("ab-test", &read(artifacts::AB_TEST), cfg, &fleet.backends).unwrap();
    let arm_of = |r: &Request| match loaded.decide(r, &fleet.stats).unwrap() {
        Decision::Route(plan) => {
            (plan.targets[0].backend.clone(), plan.targets.len(), plan.labels.iter().find(|(k, _)| k == "arm").unwrap().1.clone())
        }
        other => panic!("{other:?}"),
    };
    // Sticky: the same user always lands in the same arm, whatever the seed.
    for u in 0..50 {
        let name = format!("user-{u}");
        let first = arm_of(&with(user("hi"), |r| r.caller.user = Some(name.clone())));
        for seed in 1..5 {
            assert_eq!(arm_of(&with(user("hi"), |r| (r.caller.user, r.seed) = (Some(name.clone()), seed))), first, "{name}");
        }
        let expected_backend = if first.2 == "control" { "standard" } else { "budget" };
        assert_eq!((first.0.as_str(), first.1), (expected_backend, 2), "the other arm is the fallback");
    }
    // The split follows the weights, over users and over seeds.
    let control_users = (0..2000).filter(|u| arm_of(&with(user("hi"), |r| r.caller.user = Some(format!("u{u}")))).2 == "control").count();
    assert!((900..1100).contains(&control_users), "{control_users} of 2000 users in control");
    let control_seeds =
        (0..2000u64).filter(|s| arm_of(&with(user("hi"), |r| r.seed = s.wrapping_mul(0x9E37_79B9_7F4A_7C15))).2 == "control").count();
    assert!((900..1100).contains(&control_seeds), "{control_seeds} of 2000 anonymous requests in control");

    let skewed =
        r#"{"arms": [{"name": "a", "backend": "premium", "weight": 0}, {"name": "b", "backend": "budget", "weight": 1}], "sticky": false}"#;
    run(
        "ab-test",
        artifacts::AB_TEST,
        skewed,
        &fleet,
        vec![Case {
            name: "zero weight never wins",
            request: with(user("x"), |r| r.caller.user = Some("z".into())),
            expect: Expect::Route(&["budget", "premium"], &[("arm", "b"), ("assignment", "random")]),
        }],
    );
    refused("ab-test", artifacts::AB_TEST, r#"{"arms": []}"#, &fleet, "`arms` is empty");
    refused("ab-test", artifacts::AB_TEST, r#"{"arms": [{"name": "a", "backend": "ghost", "weight": 1}]}"#, &fleet, "`ghost`");
    refused("ab-test", artifacts::AB_TEST, r#"{"arms": [{"name": "a", "backend": "budget", "weight": 0}]}"#, &fleet, "add up to 0");
}

#[test]
fn adaptive() {
    let healthy = || {
        Fleet::default().with("fast", 1.0, |_, s| s.latency_p50_ms = 200.0).with("slow", 1.0, |_, s| s.latency_p50_ms = 2000.0).with(
            "pricey",
            8.0,
            |_, s| s.latency_p50_ms = 200.0,
        )
    };
    let loaded = |fleet: &Fleet| runtime().load("adaptive", &read(artifacts::ADAPTIVE), r#"{"explore": 0.0}"#, &fleet.backends).unwrap();
    let primaries = |fleet: &Fleet| {
        let policy = loaded(fleet);
        let mut counts = std::collections::BTreeMap::<String, u32>::new();
        for seed in 0..1000u64 {
            let request = with(user("hi"), |r| r.seed = seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let Decision::Route(plan) = policy.decide(&request, &fleet.stats).unwrap() else { panic!() };
            *counts.entry(plan.targets[0].backend.clone()).or_default() += 1;
        }
        counts
    };
    let c = primaries(&healthy());
    assert!(c["fast"] > 600 && c["fast"] > c["slow"] * 5 && c["fast"] > c["pricey"], "{c:?}");

    // `fast` starts failing: traffic leaves it.
    let mut failing = healthy();
    failing.stats[0].error_rate = 0.6;
    let c = primaries(&failing);
    assert!(c.get("fast").copied().unwrap_or(0) < 20, "{c:?}");

    // Its circuit opens: it is never the primary and comes last.
    let mut open = healthy();
    open.stats[0].circuit = CircuitState::Open;
    run(
        "adaptive",
        artifacts::ADAPTIVE,
        r#"{"explore": 0.0, "max_targets": 3}"#,
        &open,
        vec![Case {
            name: "open circuit last",
            request: user("hi"),
            expect: Expect::Route(&["pricey", "slow", "fast"], &[("reason", "adaptive")]),
        }],
    );

    // It recovers: traffic comes back.
    let c = primaries(&healthy());
    assert!(c["fast"] > 600, "{c:?}");

    // Exploration sends a share anywhere.
    let policy = runtime().load("adaptive", &read(artifacts::ADAPTIVE), r#"{"explore": 1.0}"#, &failing.backends).unwrap();
    let explored = (0..300u64).filter(|s| matches!(policy.decide(&with(user("x"), |r| r.seed = s * 7919), &failing.stats).unwrap(), Decision::Route(p) if p.targets[0].backend == "fast")).count();
    assert!(explored > 50, "exploration never tried the failing backend ({explored})");
    refused("adaptive", artifacts::ADAPTIVE, r#"{"explore": 2}"#, &healthy(), "`explore` between 0 and 1");
}

#[test]
fn content_aware() {
    let fleet = Fleet::default()
        .with("large", 5.0, |b, _| b.context_window = 1_000_000)
        .with("coder", 2.0, |_, _| {})
        .with("fast", 1.5, |_, _| {})
        .with("small", 0.2, |b, _| (b.capabilities.vision, b.capabilities.tools) = (false, false));
    let cfg = r#"{"specialist": "coder", "urgent": "fast", "cheap": "small", "long_prompt_tokens": 8000, "short_prompt_tokens": 50,
                  "tiers": {"free": ["small", "fast"], "pro": ["small", "fast", "coder", "large"]}}"#;
    let long = with(user("a long document"), |r| r.input_tokens = 20_000);
    let tools =
        with(user("What is the weather in Paris today, please tell me in detail with sources?"), |r| r.tools = vec!["get_weather".into()]);
    run(
        "content-aware",
        artifacts::CONTENT_AWARE,
        cfg,
        &fleet,
        vec![
            Case {
                name: "images need vision",
                request: with(user("what is in this photo?"), |r| r.messages[0].has_image = true),
                expect: Expect::Route(&["fast", "coder", "large"], &[("rule", "default")]),
            },
            Case {
                name: "tool calls need tool support",
                request: tools,
                expect: Expect::Route(&["fast", "coder", "large"], &[("rule", "default")]),
            },
            Case {
                name: "long prompts go to the largest context",
                request: long,
                expect: Expect::Route(&["large", "small", "fast", "coder"], &[("rule", "long")]),
            },
            Case {
                name: "code goes to the specialist",
                request: user("Why does this fail? ```fn main() { let x: u8 = 300; }```"),
                expect: Expect::Route(&["coder", "small", "fast", "large"], &[("rule", "code")]),
            },
            Case {
                name: "maths goes to the specialist",
                request: user("Solve the equation x^2 - 4 = 0"),
                expect: Expect::Route(&["coder", "small", "fast", "large"], &[("rule", "code")]),
            },
            Case {
                name: "urgent wording goes to the fast model",
                request: user("This is URGENT, my order is broken!"),
                expect: Expect::Route(&["fast", "small", "coder", "large"], &[("rule", "urgent")]),
            },
            Case {
                name: "a word inside another is not a match",
                request: user("Tell me about the unbrokenly fascinating history of mining towns."),
                expect: Expect::Route(&["small", "fast", "coder", "large"], &[("rule", "short")]),
            },
            Case {
                name: "short prompts go to the cheap model",
                request: user("Hi there!"),
                expect: Expect::Route(&["small", "fast", "coder", "large"], &[("rule", "short")]),
            },
            Case {
                name: "the free tier is limited",
                request: tagged("Why does this fail? ```fn main() {}```", "tier", "free"),
                expect: Expect::Route(&["small", "fast"], &[("rule", "short"), ("tier", "free")]),
            },
            Case {
                name: "the free tier cannot read long documents",
                request: with(tagged("long", "tier", "free"), |r| r.input_tokens = 200_000),
                expect: Expect::Reject(400),
            },
        ],
    );
    refused("content-aware", artifacts::CONTENT_AWARE, r#"{"specialist": "ghost"}"#, &fleet, "`specialist` names `ghost`");
}
