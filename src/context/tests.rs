//! Property tests of the whole pipeline on arbitrary agent conversations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::conversation::Counter;
use super::{ContextEngine, PlanRequest, Resolved};
use crate::config::Config;
use crate::config::context::Enabled;
use crate::proxy::request::inspect;
use crate::tokens::Tokenizer;
use crate::tokens::cache::MessageCache;
use crate::tokens::chat::count_request;

fn engine(extra: &str) -> ContextEngine {
    let text = format!(
        r#"builtin_catalog = false
[providers.p]
base_url = "http://127.0.0.1:1"
[models."p/m"]
provider = "p"
max_context_size = 3000
[context.masking]
threshold_tokens = 60
preview_chars = 40
[context.observation]
keep_last_tool_turns = 2
[context.compaction]
threshold = 0.5
keep_last_exchanges = 2
cooldown_secs = 0
{extra}"#
    );
    let config = Config::from_sources(Some(("test", &text)), &|_: &str| None).unwrap();
    ContextEngine::new(&config)
}

#[derive(Debug, Clone)]
enum Step {
    User(usize),
    Text(usize),
    /// Tool calls with their results' sizes; `true`: the result is an error.
    Tools(Vec<(usize, bool)>),
    System,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1usize..40).prop_map(Step::User),
        1 => (1usize..30).prop_map(Step::Text),
        4 => prop::collection::vec((0usize..120, any::<bool>()), 1..4).prop_map(Step::Tools),
        1 => Just(Step::System),
    ]
}

fn words(n: usize, seed: usize) -> String {
    (0..n)
        .map(|i| format!("w{} ", (i * 31 + seed) % 97))
        .collect()
}

fn conversation(steps: &[Step]) -> Bytes {
    let mut messages = vec![json!({"role": "system", "content": "You are an agent."})];
    let mut call = 0;
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::User(n) => messages.push(json!({"role": "user", "content": words(*n, i)})),
            Step::Text(n) => messages.push(json!({"role": "assistant", "content": words(*n, i)})),
            Step::System => {
                messages.push(json!({"role": "system", "content": format!("note {i}")}))
            }
            Step::Tools(results) => {
                let ids: Vec<String> = results
                    .iter()
                    .map(|_| {
                        call += 1;
                        format!("call_{call}")
                    })
                    .collect();
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": ids.iter().map(|id| json!({
                    "id": id, "type": "function", "function": {"name": format!("tool_{}", id.len() % 3), "arguments": "{\"a\":1}"}
                })).collect::<Vec<_>>()}));
                for (id, (size, error)) in ids.iter().zip(results) {
                    let text = if *error {
                        format!("Error: failed\n{}", words(*size, i))
                    } else {
                        format!("line\n{}", words(*size * 3, i))
                    };
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                }
            }
        }
    }
    Bytes::from(serde_json::to_vec(&json!({"model": "p/m", "messages": messages})).unwrap())
}

fn run(engine: &ContextEngine, body: &Bytes, enabled: Enabled, force: bool) -> Bytes {
    let tokenizer = Tokenizer::cl100k_base();
    let cache = MessageCache::new(1 << 22);
    let counter = Counter {
        tokenizer: &tokenizer,
        cache: &cache,
    };
    let layout = inspect(body).unwrap().layout;
    let plan = engine.plan(
        PlanRequest {
            body: body.clone(),
            layout,
            resolved: Resolved {
                enabled,
                force_compact: force,
            },
            window: 3000,
            conversation_key: 1,
            dry_run: true,
        },
        &counter,
    );
    let (rendered, outcome) = engine.finish(plan, None, &counter);
    assert!(outcome.tokens_after <= outcome.tokens_before);
    rendered.map_or_else(|| body.clone(), |(b, _)| b)
}

fn messages(body: &[u8]) -> Vec<Value> {
    let value: Value = serde_json::from_slice(body).expect("valid JSON out");
    value["messages"].as_array().unwrap().clone()
}

fn tokens(body: &[u8]) -> u64 {
    count_request(body, &Tokenizer::cl100k_base(), &MessageCache::new(1 << 22)).total
}

/// Every result answers a call made before it, and every call made keeps its results.
fn pairing_intact(original: &[Value], out: &[Value]) {
    let mut open: Vec<String> = Vec::new();
    for m in out {
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            open.push(call["id"].as_str().unwrap().to_string());
        }
        if m["role"] == "tool" {
            let id = m["tool_call_id"].as_str().unwrap();
            assert!(open.iter().any(|o| o == id), "result {id} without its call");
        }
    }
    let answered = |list: &[Value], id: &str| {
        list.iter()
            .any(|m| m["role"] == "tool" && m["tool_call_id"] == id)
    };
    for id in &open {
        assert_eq!(
            answered(original, id),
            answered(out, id),
            "call {id} lost its result"
        );
    }
}

fn systems(list: &[Value]) -> Vec<Value> {
    list.iter()
        .filter(|m| {
            m["role"] == "system"
                && !m["content"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("[kimi-proxy")
        })
        .cloned()
        .collect()
}

const MASK_OBSERVE: Enabled = Enabled {
    masking: true,
    observation: true,
    compaction: false,
};
const ALL: Enabled = Enabled {
    masking: true,
    observation: true,
    compaction: true,
};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn masking_and_observation_keep_the_conversation_shape(steps in prop::collection::vec(step(), 1..30)) {
        let engine = engine("");
        let body = conversation(&steps);
        for enabled in [
            Enabled { masking: true, ..Enabled::default() },
            Enabled { observation: true, ..Enabled::default() },
            MASK_OBSERVE,
        ] {
            let out = run(&engine, &body, enabled, false);
            let (before, after) = (messages(&body), messages(&out));
            prop_assert_eq!(before.len(), after.len());
            for (a, b) in before.iter().zip(&after) {
                prop_assert_eq!(&a["role"], &b["role"]);
                prop_assert_eq!(&a["tool_call_id"], &b["tool_call_id"]);
                prop_assert_eq!(&a["tool_calls"], &b["tool_calls"]);
            }
            pairing_intact(&before, &after);
            prop_assert_eq!(systems(&before), systems(&after));
            prop_assert!(tokens(&out) <= tokens(&body));
            // Applied twice: nothing more changes.
            prop_assert_eq!(run(&engine, &out, enabled, false), out);
        }
    }

    #[test]
    fn remembered_facts_change_nothing(steps in prop::collection::vec(step(), 1..30)) {
        // An engine that saw the conversation's beginning and then the conversation itself, as on an agent's
        // turns, sends exactly what an engine seeing it for the first time sends.
        let warm = engine("");
        let body = conversation(&steps);
        // Its beginning at other byte offsets (a field before `messages`): nothing cached may depend on where.
        let earlier = {
            let start = conversation(&steps[..steps.len() / 2]);
            let mut moved = br#"{"max_tokens":123456,"#.to_vec();
            moved.extend_from_slice(&start[1..]);
            Bytes::from(moved)
        };
        for enabled in [
            Enabled { masking: true, ..Enabled::default() },
            Enabled { observation: true, ..Enabled::default() },
            MASK_OBSERVE,
            ALL,
        ] {
            let _ = run(&warm, &earlier, enabled, false);
            let first = run(&warm, &body, enabled, false);
            let again = run(&warm, &body, enabled, false);
            let fresh = run(&engine(""), &body, enabled, false);
            prop_assert_eq!(&first, &fresh);
            prop_assert_eq!(&again, &fresh);
        }
    }

    #[test]
    fn compaction_keeps_pairs_systems_and_never_grows(steps in prop::collection::vec(step(), 1..30), force in any::<bool>()) {
        let engine = engine("");
        let body = conversation(&steps);
        for enabled in [Enabled { compaction: true, ..Enabled::default() }, ALL] {
            let out = run(&engine, &body, enabled, force);
            let (before, after) = (messages(&body), messages(&out));
            prop_assert!(after.len() <= before.len() + 1);
            pairing_intact(&before, &after);
            prop_assert_eq!(systems(&before), systems(&after));
            prop_assert!(tokens(&out) <= tokens(&body), "{} > {}", tokens(&out), tokens(&body));
            // The kept tail is the original's, byte for byte.
            let summary = after.iter().position(|m| m["content"].as_str().is_some_and(|c| c.starts_with("[kimi-proxy compacted")));
            if let (Some(at), false) = (summary, enabled.masking || enabled.observation) {
                let tail: Vec<&Value> = after[at + 1..].iter().filter(|m| m["role"] != "system").collect();
                let originals: Vec<&Value> = before.iter().filter(|m| m["role"] != "system").collect();
                prop_assert_eq!(&tail[..], &originals[originals.len() - tail.len()..]);
            }
        }
    }
}
